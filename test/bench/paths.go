package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
)

// bench is what every workload and path needs; the harness builds it once.
type bench struct {
	opts     Options
	tools    tools
	procs    *procSet
	tmp      string // temporary directory: configs, logs
	self     string // this binary: the app, reverseproxy and the Go generators
	tidegate string // the tidegate binary built from this checkout
	appHTTP  string // the app's HTTP/1.1 and h2c address
	appGRPC  string // the app's gRPC address
	clkTck   int64  // clock ticks per second, for /proc's CPU times
	notes    *notes
	seq      int // numbers the temporary files of each started path
}

// skipError says that a path cannot be measured on this machine (its tool
// is missing); the harness prints a row saying so and goes on.
type skipError struct{ reason string }

func (e skipError) Error() string { return e.reason }

// running is a path ready for load: generators connect to addr.
type running struct {
	addr string
	pr   *proc  // the proxy; nil for direct
	log  string // the proxy's log file, scanned for errors after it stops
	kind string // log format: tidegate, nginx, haproxy or go
}

// startPath starts the proxy of path in front of the app, for a load
// generator that speaks p. It returns a skipError when a tool is missing.
func (b *bench) startPath(path string, p proto) (*running, error) {
	upstream := b.appHTTP
	if p == protoGRPC {
		upstream = b.appGRPC
	}
	if path == pathDirect {
		return &running{addr: upstream}, nil
	}
	listen, err := freePort()
	if err != nil {
		return nil, err
	}
	b.seq++
	dir := filepath.Join(b.tmp, path+"-"+strconv.Itoa(b.seq))
	cpu := b.opts.ServerCPU
	var spec procSpec
	r := &running{addr: listen, kind: path}
	switch path {
	case pathTidegate, pathTidegatePlain, pathTidegateBare:
		r.log, r.kind = dir+".log", pathTidegate
		args := tidegatePathArgs(path, listen, upstream)
		spec = procSpec{Bin: b.tidegate, Args: args, Env: []string{"GOMAXPROCS=1"}, Log: r.log}
	case pathReverseProxy:
		r.log, r.kind = dir+".log", "go"
		up := "http1"
		if p == protoGRPC {
			up = "h2c"
		}
		spec = procSpec{Bin: b.self, Args: []string{"reverseproxy", "-listen", listen, "-upstream", upstream, "-upstream-protocol", up},
			Env: []string{"GOMAXPROCS=1"}, Log: r.log}
	case pathNginx:
		if b.tools.path("nginx") == "" {
			return nil, skipError{"nginx is not installed"}
		}
		if spec, r.log, err = nginxSpec(dir, b.tools.path("nginx"), listen, upstream, p); err != nil {
			return nil, err
		}
	case pathHAProxy, pathHAProxyBare:
		if b.tools.path("haproxy") == "" {
			return nil, skipError{"haproxy is not installed"}
		}
		r.kind = pathHAProxy
		if spec, r.log, err = haproxySpec(dir, b.tools.path("haproxy"), listen, upstream, p, addsHeaders(path)); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown path %q", path)
	}
	spec.Name, spec.CPU = path, cpu
	if r.pr, err = b.procs.start(spec); err != nil {
		return nil, err
	}
	return r, nil
}

// tidegateArgs runs tidegate with its default data-path settings. The
// health and admin listeners are off; the drain delay and quiet period
// are zero so that it stops at once when the harness is done with it.
// --upstream-protocol stays auto: gRPC that arrives over HTTP/2 goes to
// the app as h2c, everything else as HTTP/1.1, like nginx and HAProxy.
func tidegateArgs(listen, upstream string) []string {
	return []string{"run", "--listen", listen, "--upstream", upstream,
		"--health-listen", "off", "--admin-listen", "off",
		"--drain-delay", "0s", "--drain-quiet", "0s"}
}

// tidegatePathArgs is tidegate's command line for one of its paths.
func tidegatePathArgs(path, listen, upstream string) []string {
	args := tidegateArgs(listen, upstream)
	switch path {
	case pathTidegatePlain:
		args = append(args, "--plain-syscalls")
	case pathTidegateBare:
		args = append(args, "--forwarded-headers", "off", "--request-id", "off")
	}
	return args
}

// stop stops the proxy and notes what its log says went wrong.
func (b *bench) stop(r *running, label string) error {
	if r.pr == nil {
		return nil
	}
	err := r.pr.stop()
	if r.log != "" {
		if n, first := scanLog(r.log, r.kind); n > 0 {
			b.notes.add("%s: %d warning/error line(s) in its log; first: %s", label, n, first)
		}
	}
	return err
}

// freePort returns a loopback address with a port that was free a moment
// ago. nginx and HAProxy need the port in their configuration, so it
// cannot be handed over as a listener.
func freePort() (string, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

var errNoRequests = errors.New("no request succeeded")
