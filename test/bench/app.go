package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// Bodies the app serves; the checks compare lengths against these.
const (
	smallBody = 1 << 10  // GET /1k
	bigBody   = 64 << 10 // GET /64k
)

// runApp is the upstream app: HTTP/1.1 and h2c on -http (GET /1k, /64k),
// grpc-go's interop TestService on -grpc. It runs until ctx ends.
func runApp(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("app", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpAddr := fs.String("http", "127.0.0.1:0", "HTTP/1.1 and h2c listen address")
	grpcAddr := fs.String("grpc", "127.0.0.1:0", "gRPC listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lc net.ListenConfig
	hl, err := lc.Listen(ctx, "tcp", *httpAddr)
	if err != nil {
		return err
	}
	gl, err := lc.Listen(ctx, "tcp", *grpcAddr)
	if err != nil {
		hl.Close()
		return err
	}

	srv := &http.Server{Handler: appHandler(), ReadHeaderTimeout: 10 * time.Second}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, benchService{payload: bytes.Repeat([]byte("p"), 1<<20)})

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(hl) }()
	go func() { errc <- gs.Serve(gl) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout/2)
	defer cancel()
	gs.Stop()
	err = errors.Join(err, srv.Shutdown(sctx))
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// forwardHeaders are what a proxy adds to each request; tidegate adds them
// by default and the bench configures nginx and haproxy to add them too.
var forwardHeaders = []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", requestIDHeader}

const (
	requestIDHeader = "X-Request-Id"
	// seenHeader is the app's answer to a request that asks for it
	// (wantSeen): which of forwardHeaders it saw. Requests under load do
	// not ask, so that every path gets the same answer.
	seenHeader = "X-Bench-Seen"
	wantSeen   = "X-Bench-Want-Seen"
)

// appSeen lists the forwardHeaders that get returns, as name=value pairs
// separated by commas.
func appSeen(get func(string) string) string {
	var out []string
	for _, h := range forwardHeaders {
		if v := get(h); v != "" {
			out = append(out, h+"="+v)
		}
	}
	return strings.Join(out, ",")
}

func appHandler() http.Handler {
	mux := http.NewServeMux()
	for path, n := range map[string]int{"GET /1k": smallBody, "GET /64k": bigBody} {
		body := bytes.Repeat([]byte("x"), n)
		size := strconv.Itoa(n)
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", size)
			if r.Header.Get(wantSeen) != "" {
				w.Header().Set(seenHeader, appSeen(r.Header.Get))
			}
			_, _ = w.Write(body)
		})
	}
	return mux
}

// benchService answers UnaryCall with the first ResponseSize bytes of
// payload.
type benchService struct {
	testpb.UnimplementedTestServiceServer
	payload []byte // read only
}

// With FillServerId, which the load never sets, ServerId tells which of
// forwardHeaders the call's metadata had (appSeen).
func (s benchService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := int(req.GetResponseSize())
	if n < 0 || n > len(s.payload) {
		return nil, fmt.Errorf("response size %d out of range", n)
	}
	resp := &testpb.SimpleResponse{Payload: &testpb.Payload{Body: s.payload[:n]}}
	if req.GetFillServerId() {
		md, _ := metadata.FromIncomingContext(ctx)
		resp.ServerId = appSeen(func(h string) string { return strings.Join(md.Get(h), ",") })
	}
	return resp, nil
}
