package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidegate/tidegate/test/fakeapp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcRig is a grpc-go server behind tidegate's public server.
type grpcRig struct {
	tracker  *Tracker
	front    *Server
	client   testpb.TestServiceClient
	accepted *atomic.Int32 // client connections accepted by tidegate
	own      bool          // tidegate's own HTTP/2 server serves h2c (ServerOptions.FastPath)
	served   *atomic.Int32 // requests that reached the server's handler chain
}

// serverModes are the two HTTP/2 servers of a cleartext listener: net/http
// with x/net/http2, and tidegate's own (h2serve.go), which ServerOptions.
// FastPath turns on.
var serverModes = []struct {
	name string
	own  bool
}{{"net/http", false}, {"own h2", true}}

// forEachServer runs f as a subtest for each HTTP/2 server.
func forEachServer(t *testing.T, f func(t *testing.T, own bool)) {
	for _, m := range serverModes {
		t.Run(m.name, func(t *testing.T) { f(t, m.own) })
	}
}

// expectServedBy checks which server served the rig's h2c connections:
// tidegate's own serves gRPC by splicing, so no call reaches the handler
// chain; net/http serves every call through it.
func (r *grpcRig) expectServedBy(t *testing.T, calls int32) {
	t.Helper()
	got := r.served.Load()
	if r.own && got != 0 {
		t.Fatalf("own h2: %d gRPC calls went through the handler chain; want all spliced", got)
	}
	if !r.own && got != calls {
		t.Fatalf("net/http: %d calls reached the handler, want %d", got, calls)
	}
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newGRPCRig(t *testing.T, protocol UpstreamProtocol, own bool) *grpcRig {
	return newGRPCRigTimeout(t, protocol, own, 0)
}

// newGRPCRigTimeout: own serves h2c with tidegate's own HTTP/2 server.
func newGRPCRigTimeout(t *testing.T, protocol UpstreamProtocol, own bool, headerTimeout time.Duration) *grpcRig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, fakeapp.GRPCService{})
	gsDone := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(gsDone) }()

	up, _ := ParseUpstream(ln.Addr().String())
	r := &grpcRig{tracker: NewTracker(TrackerOptions{}), accepted: new(atomic.Int32), own: own, served: new(atomic.Int32)}
	m, err := NewMetrics(prometheus.NewRegistry(), r.tracker)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Options{Upstream: up, Protocol: protocol, Tracker: r.tracker, Metrics: m,
		TransportOptions: TransportOptions{IdleConnTimeout: time.Minute, ResponseHeaderTimeout: headerTimeout}})
	if err != nil {
		t.Fatal(err)
	}
	fln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	so := ServerOptions{}
	if own {
		so.FastPath = h
	}
	counted := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.served.Add(1)
		h.ServeHTTP(w, req)
	})
	r.front = NewServer(countingListener{fln, r.accepted}, counted, r.tracker, so)
	if own && !r.front.h2own {
		t.Fatal("NewServer left tidegate's own HTTP/2 server off")
	}
	served := make(chan error, 1)
	go func() { served <- r.front.Serve() }()
	conn, err := grpc.NewClient(fln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	r.client = testpb.NewTestServiceClient(conn)
	t.Cleanup(func() {
		conn.Close()
		_ = r.front.Close()
		<-served
		h.CloseIdleConnections()
		gs.Stop()
		<-gsDone
		waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 })
	})
	return r
}

func TestGRPCAllFourKindsThroughTheProxy(t *testing.T) {
	for _, proto := range []UpstreamProtocol{UpstreamAuto, UpstreamH2C} {
		t.Run(string(proto), func(t *testing.T) {
			forEachServer(t, func(t *testing.T, own bool) {
				r := newGRPCRig(t, proto, own)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()

				// Unary, with a large (4 MiB - 1 KiB) response and the deadline
				// propagated in grpc-timeout.
				resp, err := r.client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 4<<20 - 1024})
				if err != nil {
					t.Fatalf("unary: %v", err)
				}
				if len(resp.GetPayload().GetBody()) != 4<<20-1024 || !strings.HasPrefix(resp.GetUsername(), "deadline in ") {
					t.Fatalf("unary: %d bytes, %q", len(resp.GetPayload().GetBody()), resp.GetUsername())
				}

				// Server streaming.
				ss, err := r.client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
					ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 20}, {Size: 30}}})
				if err != nil {
					t.Fatal(err)
				}
				for _, want := range []int{10, 20, 30} {
					m, err := ss.Recv()
					if err != nil || len(m.GetPayload().GetBody()) != want {
						t.Fatalf("server stream: %v, %v", m, err)
					}
				}
				if _, err := ss.Recv(); !errors.Is(err, io.EOF) {
					t.Fatalf("server stream end: %v", err)
				}

				// Client streaming.
				cs, err := r.client.StreamingInputCall(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, n := range []int32{100, 200, 300} {
					if err := cs.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte(strings.Repeat("p", int(n)))}}); err != nil {
						t.Fatal(err)
					}
				}
				if res, err := cs.CloseAndRecv(); err != nil || res.GetAggregatedPayloadSize() != 600 {
					t.Fatalf("client stream: %v, %v", res, err)
				}

				// Bidi: each reply arrives before the next message is sent.
				bs, err := r.client.FullDuplexCall(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for i := int32(1); i <= 3; i++ {
					if err := bs.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: i}}}); err != nil {
						t.Fatal(err)
					}
					m, err := bs.Recv()
					if err != nil || len(m.GetPayload().GetBody()) != int(i) {
						t.Fatalf("bidi %d: %v, %v", i, m, err)
					}
				}
				if err := bs.CloseSend(); err != nil {
					t.Fatal(err)
				}
				if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
					t.Fatalf("bidi end: %v", err)
				}

				// A gRPC error keeps its status and trailers.
				var trailer metadata.MD
				_, err = r.client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "not now"}},
					grpc.Trailer(&trailer))
				if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "not now" || trailer.Get("x-detail")[0] != "from-the-app" {
					t.Fatalf("error: %v, trailer %v", err, trailer)
				}

				if n := r.tracker.Connections(ProtocolH2C); n != 1 {
					t.Fatalf("h2c connections %d, want the client's 1", n)
				}
				if n := len(r.front.ownH2Conns()); (n == 1) != own {
					t.Fatalf("own h2 connections %d (own server %v)", n, own)
				}
				r.expectServedBy(t, 5)
				waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
			})
		})
	}
}

// The drain tells an HTTP/2 client to move: the response during the drain
// carries a GOAWAY, the stream completes, and the next RPC opens a new
// connection.
func TestGRPCDrainMovesTheClient(t *testing.T) { forEachServer(t, testGRPCDrainMovesTheClient) }

func testGRPCDrainMovesTheClient(t *testing.T, own bool) {
	r := newGRPCRig(t, UpstreamAuto, own)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	r.front.BeginDrain()
	for i := range 20 {
		if _, err := r.client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("RPC %d during the drain: %v", i, err)
		}
	}
	if r.tracker.Requests() != 21 {
		t.Fatalf("%d requests proxied, want 21", r.tracker.Requests())
	}
	// Before the drain one connection carried everything; during it every
	// response said GOAWAY, so the client kept opening new ones.
	if n := r.accepted.Load(); n < 10 {
		t.Fatalf("the client used %d connections for 20 RPCs during the drain: it was not told to move", n)
	}
	r.expectServedBy(t, 21)
}

// A gRPC stream may wait long for its first message (a watch): the
// response-header timeout is for HTTP/1.1 requests, not for gRPC over h2c.
func TestGRPCStreamOutlivesTheResponseHeaderTimeout(t *testing.T) {
	forEachServer(t, testGRPCStreamOutlivesTheResponseHeaderTimeout)
}

func testGRPCStreamOutlivesTheResponseHeaderTimeout(t *testing.T, own bool) {
	r := newGRPCRigTimeout(t, UpstreamAuto, own, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ss, err := r.client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 1, IntervalUs: 400_000}}})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := ss.Recv(); err != nil || len(m.GetPayload().GetBody()) != 1 {
		t.Fatalf("first message after 400ms with a 100ms header timeout: %v, %v", m, err)
	}
	r.expectServedBy(t, 1)
}
