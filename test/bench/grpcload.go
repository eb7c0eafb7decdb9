package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// grpcResponseSize is the payload UnaryCall asks for, like the HTTP
// workloads' 1 KiB bodies.
const grpcResponseSize = 1 << 10

// runGRPCLoadCmd is the gRPC load generator: -callers concurrent callers
// spread over -conns client connections to -addr, each calling UnaryCall
// back to back for -duration (closed loop). It prints its measurement as
// JSON.
func runGRPCLoadCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("grpcload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "host:port")
	conns := fs.Int("conns", 4, "client connections")
	callers := fs.Int("callers", 32, "concurrent callers")
	d := fs.Duration("duration", 10*time.Second, "length of the run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *conns < 1 || *callers < 1 || *d <= 0 {
		return errors.New("grpcload: need -addr, and a positive -conns, -callers and -duration")
	}
	clients := make([]testpb.TestServiceClient, *conns)
	for i := range clients {
		cc, err := newGRPCConn(*addr)
		if err != nil {
			return err
		}
		defer cc.Close()
		clients[i] = testpb.NewTestServiceClient(cc)
	}
	m := grpcLoad(ctx, clients, *callers, *d)
	return json.NewEncoder(stdout).Encode(m)
}

// newGRPCConn returns a plaintext (h2c) client connection to addr, with
// grpc-go's own dialing and no name resolution.
func newGRPCConn(addr string) (*grpc.ClientConn, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("grpc client %s: %w", addr, err)
	}
	return cc, nil
}

// grpcLoad runs callers closed-loop callers, caller i on clients[i %
// len(clients)], until d has passed or ctx ends.
func grpcLoad(ctx context.Context, clients []testpb.TestServiceClient, callers int, d time.Duration) measurement {
	start := time.Now()
	end := start.Add(d)
	var (
		ok, failed atomic.Int64
		mu         sync.Mutex
		all        []time.Duration
		wg         sync.WaitGroup
	)
	req := &testpb.SimpleRequest{ResponseSize: grpcResponseSize, Payload: &testpb.Payload{Body: []byte("ping")}}
	for i := range callers {
		c := clients[i%len(clients)]
		wg.Go(func() {
			var lat []time.Duration
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				cctx, cancel := context.WithTimeout(ctx, requestTimeout)
				resp, err := c.UnaryCall(cctx, req)
				cancel()
				if err != nil || len(resp.GetPayload().GetBody()) != grpcResponseSize {
					failed.Add(1)
					continue
				}
				ok.Add(1)
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	m := measurement{Requests: ok.Load(), Errors: failed.Load(), Seconds: time.Since(start).Seconds()}
	m.RPS = float64(m.Requests) / m.Seconds
	m.setLatencies(all)
	return m
}
