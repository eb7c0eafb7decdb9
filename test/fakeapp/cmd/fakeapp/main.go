// Command fakeapp is the controllable app of tidegate's end-to-end tests as
// a real process: tidegate can supervise it as its child, stop it by pid,
// by HTTP or by a command, and a load balancer can front it directly (the
// "app alone" baseline).
//
// Usage:
//
//	fakeapp --listen 127.0.0.1:PORT [--id NAME] [--record FILE] [--on-term graceful|exit|ignore]
//	        [--exit-code N] [--crash-after DUR] [--orphan] [--orphan-life DUR] [--pidfile FILE]
//	        [--listen-delay DUR] [--on-hup default|record] [--h2c]
//
// Endpoints:
//
//	/                fast: "ok NAME"
//	/slow?d=DUR      answers after DUR (gives up when the request is cancelled)
//	/healthz /readyz 200 while serving, 503 once stopping (for a load balancer's checks)
//	POST /stop       graceful stop, as on SIGTERM with --on-term graceful (the http stop strategy)
//	/ws              WebSocket echo: every message comes back as it was sent
//	gRPC             with --h2c, grpc-go's interop TestService (fakeapp.GRPCService)
//	                 on HTTP/2 requests of content-type application/grpc
//	anything else    the in-process fakeapp (/status, /hang, /echo, …)
//
// Every response carries "X-Instance: NAME", so a test behind a load
// balancer can tell which process answered.
//
// With --record, one JSON line per event is appended to FILE, each written
// with one write(2): {"event":"request_start"|"request_end"|"signal"|"stop"|
// "listening"|"orphan"|"crash","path":…,"t":unix_nanos,"signal":"SIGTERM",
// "pid":…,"rid":…}; rid is the request's X-Request-Id, when it has one. A signal is recorded the moment it is received, before anything
// is done about it. On stdout fakeapp prints the "listening" event (with the
// bound address) and the "orphan" event, whether or not it records.
//
// --listen-delay makes it bind its port only after that long, like an app
// that loads before it listens; a SIGTERM or SIGINT meanwhile is handled as
// below (graceful and exit then exit at once, without ever listening).
//
// On SIGTERM or SIGINT (--on-term): graceful stops accepting, finishes what
// is in flight (at most 30s) and exits with --exit-code; exit exits 0 at once
// like a naive app; ignore keeps running. On SIGHUP, SIGUSR1, SIGUSR2 and
// SIGWINCH (--on-hup): default leaves them their default action (SIGWINCH is
// ignored, the others end the process); record records them as "signal"
// events and keeps running, like an app that reloads on SIGHUP. --crash-after makes it exit 3 on its
// own. --h2c serves HTTP/2 with prior knowledge (h2c) next to HTTP/1.1 on the
// same port, and gRPC on it. --orphan starts a grandchild (sleep, for --orphan-life) through a
// shell that exits at once, so that the grandchild is re-parented to the
// nearest subreaper. fakeapp exits by itself (code 1) if its parent dies, so
// that a killed test never leaves it behind.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/tidegate/tidegate/test/fakeapp"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	listen     string
	id         string
	record     string
	onTerm     string
	exitCode   int
	crashAfter time.Duration
	orphan     bool
	orphanLife time.Duration
	pidfile    string
	listenWait time.Duration
	onHUP      string
	h2c        bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("fakeapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to listen on")
	fs.StringVar(&o.id, "id", "", "instance name, sent as X-Instance on every response")
	fs.StringVar(&o.record, "record", "", "append one JSON line per event to this file")
	fs.StringVar(&o.onTerm, "on-term", "graceful", "on SIGTERM/SIGINT: graceful, exit or ignore")
	fs.IntVar(&o.exitCode, "exit-code", 0, "exit code after a graceful stop")
	fs.DurationVar(&o.crashAfter, "crash-after", 0, "exit 3 on its own after this long (0: never)")
	fs.BoolVar(&o.orphan, "orphan", false, "start a grandchild that is orphaned at once")
	fs.DurationVar(&o.orphanLife, "orphan-life", time.Second, "how long the orphaned grandchild lives")
	fs.StringVar(&o.pidfile, "pidfile", "", "write the pid to this file once listening")
	fs.DurationVar(&o.listenWait, "listen-delay", 0, "bind the port only after this long (0: at once)")
	fs.StringVar(&o.onHUP, "on-hup", "default", "on SIGHUP/SIGUSR1/SIGUSR2/SIGWINCH: default (their default action) or record (record, keep running)")
	fs.BoolVar(&o.h2c, "h2c", false, "serve HTTP/2 with prior knowledge and gRPC (the interop TestService) next to HTTP/1.1")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch o.onTerm {
	case "graceful", "exit", "ignore":
	default:
		return o, fmt.Errorf("--on-term %q: want graceful, exit or ignore", o.onTerm)
	}
	switch o.onHUP {
	case "default", "record":
	default:
		return o, fmt.Errorf("--on-hup %q: want default or record", o.onHUP)
	}
	if o.listenWait < 0 {
		return o, fmt.Errorf("--listen-delay %s: want 0 or more", o.listenWait)
	}
	if o.id == "" {
		o.id = "pid" + strconv.Itoa(os.Getpid())
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "fakeapp:", err)
		return 2
	}
	rec, err := newRecorder(o.record, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "fakeapp:", err)
		return 1
	}
	defer rec.close()

	// Catch signals before anything else, so that none is missed.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if o.onHUP == "record" {
		hups := make(chan os.Signal, 4)
		signal.Notify(hups, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
		go func() {
			for sig := range hups {
				rec.event(event{Event: "signal", Signal: signalName(sig)}, false)
			}
		}()
	}
	go watchParent(os.Getppid())

	if o.listenWait > 0 {
		if code, stop := waitToListen(o, rec, sigs); stop {
			return code
		}
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		fmt.Fprintln(stderr, "fakeapp:", err)
		return 1
	}
	a := &app{o: o, rec: rec, lib: fakeapp.New(), stopping: make(chan struct{}), stopped: make(chan struct{})}
	a.srv = &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second}
	if o.h2c {
		a.grpc = grpc.NewServer()
		testpb.RegisterTestServiceServer(a.grpc, fakeapp.GRPCService{})
		a.srv.Protocols = new(http.Protocols)
		a.srv.Protocols.SetHTTP1(true)
		a.srv.Protocols.SetUnencryptedHTTP2(true)
	}
	if o.pidfile != "" {
		if err := writeFileAtomic(o.pidfile, strconv.Itoa(os.Getpid())+"\n"); err != nil {
			fmt.Fprintln(stderr, "fakeapp:", err)
			return 1
		}
	}
	rec.event(event{Event: "listening", Addr: ln.Addr().String(), PID: os.Getpid(), ID: o.id}, true)
	if o.orphan {
		pid, err := spawnOrphan(o.orphanLife)
		if err != nil {
			fmt.Fprintln(stderr, "fakeapp:", err)
			return 1
		}
		rec.event(event{Event: "orphan", PID: pid}, true)
	}
	if o.crashAfter > 0 {
		time.AfterFunc(o.crashAfter, func() {
			rec.event(event{Event: "crash"}, false)
			os.Exit(3)
		})
	}

	go func() {
		for sig := range sigs {
			rec.event(event{Event: "signal", Signal: signalName(sig)}, false)
			switch o.onTerm {
			case "exit":
				os.Exit(0)
			case "graceful":
				a.stop()
			}
		}
	}()

	if err := a.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(stderr, "fakeapp:", err)
		return 1
	}
	<-a.stopped
	return o.exitCode
}

// waitToListen waits --listen-delay before the port is bound. A SIGTERM or
// SIGINT meanwhile is recorded; with --on-term graceful or exit it ends the
// wait and fakeapp (stop is true) with code, as there is nothing to finish.
func waitToListen(o options, rec *recorder, sigs <-chan os.Signal) (code int, stop bool) {
	t := time.NewTimer(o.listenWait)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return 0, false
		case sig := <-sigs:
			rec.event(event{Event: "signal", Signal: signalName(sig)}, false)
			switch o.onTerm {
			case "exit":
				return 0, true
			case "graceful":
				return o.exitCode, true
			}
		}
	}
}

// app is the HTTP side of fakeapp.
type app struct {
	o   options
	rec *recorder
	lib *fakeapp.App
	srv *http.Server
	// grpc serves gRPC requests with --h2c (through its ServeHTTP, on the
	// same server); nil without.
	grpc *grpc.Server

	once     sync.Once
	stopping chan struct{} // closed when the graceful stop begins
	stopped  chan struct{} // closed when it is done
}

// stop begins the graceful stop once: stop accepting, finish what is in
// flight (bounded), then close a.stopped.
func (a *app) stop() {
	a.once.Do(func() {
		close(a.stopping)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := a.srv.Shutdown(ctx); err != nil {
				a.lib.Close()
				_ = a.srv.Close()
			}
			close(a.stopped)
		}()
	})
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Instance", a.o.id)
	switch r.URL.Path {
	case "/healthz", "/readyz":
		select {
		case <-a.stopping:
			http.Error(w, "stopping", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
		return
	}
	rid := r.Header.Get("X-Request-Id")
	a.rec.event(event{Event: "request_start", Path: r.URL.Path, RID: rid}, false)
	defer a.rec.event(event{Event: "request_end", Path: r.URL.Path, RID: rid}, false)
	if a.grpc != nil && r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		a.grpc.ServeHTTP(w, r)
		return
	}
	switch r.URL.Path {
	case "/":
		fmt.Fprintf(w, "ok %s\n", a.o.id)
	case "/slow":
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil {
			http.Error(w, "d: want a duration", http.StatusBadRequest)
			return
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			fmt.Fprintf(w, "slept %s\n", d)
		case <-r.Context().Done():
		}
	case "/ws":
		wsEcho(w, r)
	case "/stop":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		a.rec.event(event{Event: "stop"}, false)
		fmt.Fprintln(w, "stopping")
		a.stop()
	default:
		a.lib.ServeHTTP(w, r)
	}
}

// wsEcho accepts a WebSocket and sends every message back as it came,
// until the client closes it or the request ends.
func wsEcho(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the client already
	}
	defer c.CloseNow()
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}

// event is one line of the record file.
type event struct {
	Event  string `json:"event"`
	Path   string `json:"path,omitempty"`
	T      int64  `json:"t"`
	Signal string `json:"signal,omitempty"`
	PID    int    `json:"pid,omitempty"`
	Addr   string `json:"addr,omitempty"`
	ID     string `json:"id,omitempty"`
	RID    string `json:"rid,omitempty"`
}

// recorder appends events to the record file, one write per line.
type recorder struct {
	mu     sync.Mutex
	f      *os.File // nil without --record
	stdout io.Writer
}

func newRecorder(path string, stdout io.Writer) (*recorder, error) {
	r := &recorder{stdout: stdout}
	if path == "" {
		return r, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open record file: %w", err)
	}
	r.f = f
	return r, nil
}

// event stamps e with the time now and records it; print also writes it to
// stdout.
func (r *recorder) event(e event, print bool) {
	e.T = time.Now().UnixNano()
	b, _ := json.Marshal(e)
	b = append(b, '\n')
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		_, _ = r.f.Write(b)
	}
	if print {
		_, _ = r.stdout.Write(b)
	}
}

func (r *recorder) close() {
	if r.f != nil {
		_ = r.f.Close()
	}
}

// spawnOrphan starts `sleep` in the background of a shell that exits at
// once, and returns the sleep's pid: an orphan from its first moment.
func spawnOrphan(life time.Duration) (int, error) {
	script := fmt.Sprintf("sleep %.3f </dev/null >/dev/null 2>&1 & echo $!", life.Seconds())
	out, err := exec.Command("/bin/sh", "-c", script).Output()
	if err != nil {
		return 0, fmt.Errorf("spawn orphan: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("spawn orphan: the shell printed %q, not a pid", out)
	}
	return pid, nil
}

// watchParent exits when the parent goes away (fakeapp is re-parented), so
// that an app whose tidegate was killed does not linger.
func watchParent(ppid int) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		if os.Getppid() != ppid {
			fmt.Fprintln(os.Stderr, "fakeapp: parent is gone; exiting")
			os.Exit(1)
		}
	}
}

func writeFileAtomic(path, content string) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGUSR1:
		return "SIGUSR1"
	case syscall.SIGUSR2:
		return "SIGUSR2"
	case syscall.SIGWINCH:
		return "SIGWINCH"
	}
	return sig.String()
}
