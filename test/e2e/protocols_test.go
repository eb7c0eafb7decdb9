package e2e

import (
	"context"
	"errors"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/tidegate/tidegate/test/fakeapp"
	"github.com/tidegate/tidegate/test/need"
)

// TestH2CLoad puts h2load (nghttp2) through tidegate's h2c: zero errors.
func TestH2CLoad(t *testing.T) {
	h2load := need.Tool(t, "h2load", "/usr/bin/h2load")
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, h2load, "-n", "3000", "-c", "8", "-m", "16", tg.URL("/status?code=200")).CombinedOutput()
	if err != nil {
		t.Fatalf("h2load: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("h2load output not understood:\n%s", out)
	}
	if string(m[1]) != "3000" || string(m[3]) != "3000" || string(m[4]) != "0" || string(m[5]) != "0" {
		t.Fatalf("h2load through tidegate: %s total, %s succeeded, %s failed, %s errored\n%s", m[1], m[3], m[4], m[5], out)
	}
	if n := app.Requests("/status"); n != 3000 {
		t.Fatalf("the app answered %d requests, want 3000", n)
	}
	t.Logf("h2load: 3000 requests over h2c, 0 failed, 0 errored")
	tg.stop()
}

// TestGRPCThroughADrain: a gRPC client keeps calling through a draining
// tidegate (it is told to move by GOAWAY and reconnects while the listener
// still accepts) and loses nothing; a server stream begun before the drain
// runs to its end; both are counted and drain to zero.
func TestGRPCThroughADrain(t *testing.T) {
	gs := fakeapp.StartGRPC(t)
	tg := start(t, "--upstream", gs.Addr, "--drain-delay", "1s", "--drain-quiet", "200ms", "--drain-timeout", "10s")
	conn, err := grpc.NewClient(tg.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A server stream of 8 messages, one every 150ms: 1.2s, past the drain delay.
	params := make([]*testpb.ResponseParameters, 8)
	for i := range params {
		params[i] = &testpb.ResponseParameters{Size: 64, IntervalUs: 150_000}
	}
	stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params})
	if err != nil {
		t.Fatal(err)
	}
	streamDone := make(chan error, 1)
	go func() {
		n := 0
		for {
			_, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				if n != 8 {
					streamDone <- errors.New("stream ended after " + strconv.Itoa(n) + " messages")
					return
				}
				streamDone <- nil
				return
			}
			if err != nil {
				streamDone <- err
				return
			}
			n++
		}
	}()
	c := newClient(t)
	eventually(t, waitTimeout, "the stream counted in flight over h2c", func() (bool, string) {
		ms := scrape(t, c, tg)
		return ms.value("tidegate_inflight_requests") >= 1 && ms.value("tidegate_connections_active", "protocol", "h2c") >= 1, ""
	})

	// Unary calls before, during and after the SIGTERM, until the balancer
	// would have moved on (well inside the 1s delay).
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	calls := make(chan struct{})
	signalled := make(chan struct{})
	go func() {
		defer close(calls)
		var stopAt time.Time
		for i := 0; i < 2000; i++ {
			select {
			case <-signalled:
				if stopAt.IsZero() {
					stopAt = time.Now().Add(400 * time.Millisecond)
				}
			default:
			}
			if !stopAt.IsZero() && time.Now().After(stopAt) {
				return
			}
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 100}); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			} else {
				ok.Add(1)
			}
		}
	}()
	eventually(t, waitTimeout, "some calls before the signal", func() (bool, string) { return ok.Load() >= 50, "" })
	tg.signal(syscall.SIGTERM)
	close(signalled)
	<-calls
	if err := recv(t, streamDone, 20*time.Second, "the server stream"); err != nil {
		t.Fatalf("server stream begun before the drain: %v", err)
	}
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d gRPC calls failed through the drain; first: %v", n, ok.Load()+n, firstErr.Load())
	}
	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Fatalf("exit %d", code)
	}
	rep := tg.report()
	if rep["result"] != "complete" || rep["cut"] != float64(0) {
		t.Fatalf("drain report %v", rep)
	}
	t.Logf("gRPC through the drain: %d calls, 0 failed; the 1.2s server stream completed", ok.Load())
}
