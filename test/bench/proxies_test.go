package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/tidegate/tidegate/test/need"
)

// startTestApp serves the bench app in this process: HTTP/1.1 and h2c on
// one loopback port, gRPC on another. It returns both addresses.
func startTestApp(t *testing.T) (httpAddr, grpcAddr string) {
	t.Helper()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: appHandler()}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, benchService{payload: bytes.Repeat([]byte("p"), 4096)})
	served := make(chan error, 2)
	go func() { served <- srv.Serve(hl) }()
	go func() { served <- gs.Serve(gl) }()
	t.Cleanup(func() {
		gs.Stop()
		_ = srv.Close()
		for range 2 {
			if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("app: %v", err)
			}
		}
	})
	return hl.Addr().String(), gl.Addr().String()
}

// checkPaths runs, for each of paths and each protocol, the proxy that
// spec describes (listening on listen, in front of the test app at
// upstream) and makes the harness's check: the app sees what the path adds
// (all of the headers or none), and the opposite expectation fails, so
// that the check can tell.
func checkPaths(t *testing.T, paths []string, spec func(t *testing.T, path string, p proto, listen, upstream string) procSpec) {
	httpAddr, grpcAddr := startTestApp(t)
	var procs procSet
	t.Cleanup(procs.stopAll)
	for _, path := range paths {
		for _, p := range []proto{protoHTTP1, protoH2C, protoGRPC} {
			t.Run(path+"/"+p.String(), func(t *testing.T) {
				listen, err := freePort()
				if err != nil {
					t.Fatal(err)
				}
				upstream, reqPath := httpAddr, "/1k"
				if p == protoGRPC {
					upstream, reqPath = grpcAddr, ""
				}
				pr, err := procs.start(spec(t, path, p, listen, upstream))
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					if err := pr.stop(); err != nil {
						t.Error(err)
					}
				}()
				ctx := context.Background()
				if err := waitReady(ctx, pr, p, listen, reqPath, addsHeaders(path)); err != nil {
					t.Fatal(err)
				}
				err = checkOnce(ctx, p, listen, reqPath, !addsHeaders(path))
				want := "should add none" // expected bare, got the headers
				if !addsHeaders(path) {
					want = "did not see"
				}
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("check with the wrong expectation: %v, want an error with %q", err, want)
				}
			})
		}
	}
}

// TestProxiesAddTheSameHeaders runs the nginx and HAProxy configurations
// the harness writes in front of the app, over each protocol, and checks
// that "nginx" and "haproxy" add what tidegate adds (X-Forwarded-For,
// -Proto, -Host, a request id also on the answer) and "haproxy-bare" adds
// none of it: the check the harness makes before it measures a path.
func TestProxiesAddTheSameHeaders(t *testing.T) {
	bins := map[string]string{pathNginx: need.Tool(t, "nginx", "/usr/sbin/nginx"), pathHAProxy: need.Tool(t, "haproxy", "/usr/sbin/haproxy")}
	checkPaths(t, []string{pathNginx, pathHAProxy, pathHAProxyBare}, func(t *testing.T, path string, p proto, listen, upstream string) procSpec {
		dir := filepath.Join(t.TempDir(), path)
		var spec procSpec
		var err error
		if path == pathNginx {
			spec, _, err = nginxSpec(dir, bins[pathNginx], listen, upstream, p)
		} else {
			spec, _, err = haproxySpec(dir, bins[pathHAProxy], listen, upstream, p, addsHeaders(path))
		}
		if err != nil {
			t.Fatal(err)
		}
		spec.Name, spec.CPU = path, -1
		return spec
	})
}

// TestTidegatePaths builds tidegate and runs its three paths in front of
// the app, over each protocol: "tidegate" and "tidegate-plain" add what the
// check expects of a proxy doing the same work, "tidegate-bare" adds none
// of it, as haproxy-bare; and the opposite expectation fails.
func TestTidegatePaths(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tidegate")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	bin := filepath.Join(t.TempDir(), "tidegate")
	if out, err := runTool(context.Background(), buildTimeout, -1, goBin, "-C", "../..", "build", "-o", bin, "./cmd/tidegate"); err != nil {
		t.Fatalf("build tidegate: %v\n%s", err, out)
	}
	checkPaths(t, []string{pathTidegate, pathTidegatePlain, pathTidegateBare}, func(t *testing.T, path string, p proto, listen, upstream string) procSpec {
		return procSpec{Name: path, CPU: -1, Bin: bin, Args: tidegatePathArgs(path, listen, upstream), Log: filepath.Join(t.TempDir(), "log")}
	})
}
