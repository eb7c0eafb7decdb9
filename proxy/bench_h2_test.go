package proxy

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// HTTP/2 micro-benchmarks: the same 1 KiB answer over h2c (tidegate's own
// HTTP/2 server: the direct path to an HTTP/1.1 app) and gRPC unary calls
// (spliced to the app), each against net/http's HTTP/2 server and client
// (--net-http-only) and against no proxy at all.

func benchH2CClient(b *testing.B) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// autoProtocol sends gRPC to the app over h2c, the rest over HTTP/1.1.
func autoProtocol(o *Options) { o.Protocol = UpstreamAuto }

// BenchmarkDirectH2C is a 1 KiB GET over h2c to a Go app, no proxy.
func BenchmarkDirectH2C(b *testing.B) {
	app := benchApp(b)
	app.Config.Protocols = new(http.Protocols)
	app.Config.Protocols.SetHTTP1(true)
	app.Config.Protocols.SetUnencryptedHTTP2(true)
	benchGet(b, benchH2CClient(b), app.URL)
}

// BenchmarkProxyH2C is a 1 KiB GET over h2c through tidegate's own HTTP/2
// server to an HTTP/1.1 app.
func BenchmarkProxyH2C(b *testing.B) {
	app := benchApp(b)
	benchGet(b, benchH2CClient(b), "http://"+benchFront(b, app.Listener.Addr().String(), true, autoProtocol)+"/")
}

// BenchmarkProxyH2CNetHTTP is BenchmarkProxyH2C with net/http's HTTP/2
// server and ReverseProxy (--net-http-only).
func BenchmarkProxyH2CNetHTTP(b *testing.B) {
	app := benchApp(b)
	benchGet(b, benchH2CClient(b), "http://"+benchFront(b, app.Listener.Addr().String(), false, autoProtocol)+"/")
}

func benchGRPCApp(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, fakeapp.GRPCService{})
	done := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(done) }()
	b.Cleanup(func() { gs.Stop(); <-done })
	return ln.Addr().String()
}

func benchGRPC(b *testing.B, addr string) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	client := testpb.NewTestServiceClient(cc)
	req := &testpb.SimpleRequest{ResponseSize: 1024}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := client.UnaryCall(ctx, req)
			cancel()
			if err != nil || len(resp.GetPayload().GetBody()) != 1024 {
				b.Errorf("UnaryCall: %v", err)
				return
			}
		}
	})
}

// BenchmarkDirectGRPC is a gRPC unary call with a 1 KiB answer, no proxy.
func BenchmarkDirectGRPC(b *testing.B) { benchGRPC(b, benchGRPCApp(b)) }

// BenchmarkProxyGRPC is the same call through tidegate, spliced frame by
// frame onto an h2c connection to the app.
func BenchmarkProxyGRPC(b *testing.B) {
	benchGRPC(b, benchFront(b, benchGRPCApp(b), true, autoProtocol))
}

// BenchmarkProxyGRPCNetHTTP is BenchmarkProxyGRPC through net/http's HTTP/2
// server, ReverseProxy and x/net's HTTP/2 client (--net-http-only).
func BenchmarkProxyGRPCNetHTTP(b *testing.B) {
	benchGRPC(b, benchFront(b, benchGRPCApp(b), false, autoProtocol))
}
