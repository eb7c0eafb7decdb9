package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// readyTimeout bounds the wait for a started server to answer correctly.
const readyTimeout = 15 * time.Second

// proto is the protocol a load generator speaks to the front of a path.
type proto int

const (
	protoHTTP1 proto = iota // HTTP/1.1
	protoH2C                // HTTP/2 with prior knowledge, cleartext
	protoGRPC               // gRPC over h2c
)

func (p proto) String() string {
	return [...]string{"HTTP/1.1", "h2c", "gRPC"}[p]
}

// checkOnce sends one request over p to addr and checks the answer: for
// HTTP, a 200 of that protocol version whose body is the size the app
// sends for path; for gRPC, a UnaryCall answered with its payload. With
// headers, the app must have seen all of forwardHeaders and the answer
// must carry the request id the app saw; without, the app must have seen
// none of them.
func checkOnce(ctx context.Context, p proto, addr, path string, headers bool) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if p == protoGRPC {
		cc, err := newGRPCConn(addr)
		if err != nil {
			return err
		}
		defer cc.Close()
		var md metadata.MD
		resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx,
			&testpb.SimpleRequest{ResponseSize: grpcResponseSize, FillServerId: true}, grpc.Header(&md))
		if err != nil {
			return fmt.Errorf("gRPC UnaryCall via %s: %w", addr, err)
		}
		if n := len(resp.GetPayload().GetBody()); n != grpcResponseSize {
			return fmt.Errorf("gRPC UnaryCall via %s: payload of %d bytes, want %d", addr, n, grpcResponseSize)
		}
		if err := checkSeen(resp.GetServerId(), strings.Join(md.Get(requestIDHeader), ","), headers); err != nil {
			return fmt.Errorf("gRPC UnaryCall via %s: %w", addr, err)
		}
		return nil
	}

	tr := &http.Transport{DialContext: (&net.Dialer{}).DialContext, DisableKeepAlives: true}
	tr.Protocols = new(http.Protocols)
	wantMajor := 1
	if p == protoH2C {
		tr.Protocols.SetUnencryptedHTTP2(true)
		wantMajor = 2
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set(wantSeen, "1")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("%s GET %s via %s: %w", p, path, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s GET %s via %s: body: %w", p, path, addr, err)
	}
	want := map[string]int{"/1k": smallBody, "/64k": bigBody}[path]
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != wantMajor || len(body) != want {
		return fmt.Errorf("%s GET %s via %s: got %s %s with %d bytes, want 200 HTTP/%d with %d bytes",
			p, path, addr, resp.Proto, resp.Status, len(body), wantMajor, want)
	}
	if err := checkSeen(resp.Header.Get(seenHeader), resp.Header.Get(requestIDHeader), headers); err != nil {
		return fmt.Errorf("%s GET %s via %s: %w", p, path, addr, err)
	}
	return nil
}

// checkSeen checks what the app says it saw of forwardHeaders (seen, made
// by appSeen) against headers, and that the answer's request id is the one
// the app saw.
func checkSeen(seen, answerID string, headers bool) error {
	fields := map[string]string{}
	for f := range strings.SplitSeq(seen, ",") {
		if name, value, ok := strings.Cut(f, "="); ok {
			fields[name] = value
		}
	}
	if !headers {
		if len(fields) > 0 {
			return fmt.Errorf("the app saw %q; this path should add none of %s", seen, strings.Join(forwardHeaders, ", "))
		}
		if answerID != "" {
			return fmt.Errorf("the answer carries %s %q; this path should add none", requestIDHeader, answerID)
		}
		return nil
	}
	for _, h := range forwardHeaders {
		if fields[h] == "" {
			return fmt.Errorf("the app did not see %s (it saw %q)", h, seen)
		}
	}
	if id := fields[requestIDHeader]; answerID != id {
		return fmt.Errorf("the answer's %s is %q, the app saw %q", requestIDHeader, answerID, id)
	}
	return nil
}

// waitReady repeats checkOnce until it passes, readyTimeout passes, or the
// process exits, and returns the last error.
func waitReady(ctx context.Context, pr *proc, p proto, addr, path string, headers bool) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		err := checkOnce(ctx, p, addr, path, headers)
		if err == nil {
			return nil
		}
		if pr != nil {
			if done, exitErr := pr.exitErr(); done {
				return fmt.Errorf("%s exited before answering (%v): %w", pr.name, exitErr, err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s: %w", readyTimeout, err)
		case <-tick.C:
		}
	}
}
