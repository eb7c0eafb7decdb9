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
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
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

func appHandler() http.Handler {
	mux := http.NewServeMux()
	for path, n := range map[string]int{"GET /1k": smallBody, "GET /64k": bigBody} {
		body := bytes.Repeat([]byte("x"), n)
		size := strconv.Itoa(n)
		mux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", size)
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

func (s benchService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := int(req.GetResponseSize())
	if n < 0 || n > len(s.payload) {
		return nil, fmt.Errorf("response size %d out of range", n)
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: s.payload[:n]}}, nil
}
