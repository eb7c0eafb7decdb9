package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
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
// sends for path; for gRPC, a UnaryCall answered with its payload.
func checkOnce(ctx context.Context, p proto, addr, path string) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if p == protoGRPC {
		cc, err := newGRPCConn(addr)
		if err != nil {
			return err
		}
		defer cc.Close()
		resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: grpcResponseSize})
		if err != nil {
			return fmt.Errorf("gRPC UnaryCall via %s: %w", addr, err)
		}
		if n := len(resp.GetPayload().GetBody()); n != grpcResponseSize {
			return fmt.Errorf("gRPC UnaryCall via %s: payload of %d bytes, want %d", addr, n, grpcResponseSize)
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
	return nil
}

// waitReady repeats checkOnce until it passes, readyTimeout passes, or the
// process exits, and returns the last error.
func waitReady(ctx context.Context, pr *proc, p proto, addr, path string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		err := checkOnce(ctx, p, addr, path)
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
