package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zapcore"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/test/wait"
)

// startWith runs an in-process sidecar with exactly args and waits until
// it serves.
func startWith(t *testing.T, args ...string) (*sidecar, chan os.Signal, <-chan drain.Report) {
	t.Helper()
	return startWithEnv(t, func(string) string { return "" }, args...)
}

// startWithEnv is startWith with an environment.
func startWithEnv(t *testing.T, getenv func(string) string, args ...string) (*sidecar, chan os.Signal, <-chan drain.Report) {
	t.Helper()
	sc, sig, reports, done := runSidecar(t, getenv, args...)
	t.Cleanup(func() {
		select {
		case sig <- syscall.SIGINT:
		default:
		}
		select {
		case sig <- syscall.SIGINT: // stop now, whatever is in flight
		default:
		}
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("the sidecar did not stop")
		}
	})
	waitServing(t, sc)
	return sc, sig, reports
}

// namedApp answers its name, and holds /slow until release is closed.
func namedApp(t *testing.T, name string, release <-chan struct{}) *httptest.Server {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, name)
	}))
	t.Cleanup(app.Close)
	return app
}

func writeConfig(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// load sends requests on keep-alive connections until stop is closed and
// counts what failed.
type load struct {
	stop   chan struct{}
	wg     sync.WaitGroup
	ok     atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex
	errs   []string
	bodies sync.Map // body → struct{}
}

func startLoad(url string, workers int) *load {
	ld := &load{stop: make(chan struct{})}
	deadline := time.Now().Add(30 * time.Second) // bounded whatever happens
	for range workers {
		ld.wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second}
			defer c.CloseIdleConnections()
			for time.Now().Before(deadline) {
				select {
				case <-ld.stop:
					return
				default:
				}
				resp, err := c.Get(url)
				if err == nil {
					b, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					if rerr == nil && resp.StatusCode == 200 {
						ld.ok.Add(1)
						ld.bodies.Store(string(b), struct{}{})
						continue
					}
					if rerr == nil {
						rerr = &httpStatusErr{resp.StatusCode, string(b)}
					}
					err = rerr
				}
				ld.failed.Add(1)
				ld.mu.Lock()
				if len(ld.errs) < 5 {
					ld.errs = append(ld.errs, err.Error())
				}
				ld.mu.Unlock()
			}
		})
	}
	return ld
}

type httpStatusErr struct {
	code int
	body string
}

func (e *httpStatusErr) Error() string { return http.StatusText(e.code) + ": " + e.body }

func (ld *load) end(t *testing.T) {
	t.Helper()
	close(ld.stop)
	ld.wg.Wait()
	if ld.ok.Load() == 0 {
		t.Fatal("the load got no answer at all")
	}
	if n := ld.failed.Load(); n > 0 {
		t.Fatalf("%d of %d requests failed across the reload; first: %v", n, n+ld.ok.Load(), ld.errs)
	}
}

func (ld *load) saw(body string) bool { _, ok := ld.bodies.Load(body); return ok }

// TestReloadAppliesUnderLoad: SIGHUP with a new upstream, log level and
// drain delay applies them all; the request in flight on the old upstream
// finishes, new requests go to the new one, nothing fails.
func TestReloadAppliesUnderLoad(t *testing.T) {
	release := make(chan struct{})
	a, b := namedApp(t, "a", release), namedApp(t, "b", release)
	defer close(release)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	base := "listen: 127.0.0.1:0\nhealth_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
	writeConfig(t, file, base+"upstream: "+a.Listener.Addr().String()+"\nlog: {level: info}\ndrain: {delay: 1s}\n")
	sc, sig, _ := startWith(t, "--config", file)
	public := "http://" + sc.publicAddr()

	slow := make(chan string, 1)
	go func() {
		code, err := oneShotBody(public + "/slow")
		slow <- code + err
	}()
	wait.For(t, "the slow request in flight", func() bool { return sc.tracker.InFlight() >= 1 })
	ld := startLoad(public+"/", 4)
	wait.For(t, "load on a", func() bool { return ld.saw("a") })
	before := sc.front.list()[0]

	writeConfig(t, file, base+"upstream: "+b.Listener.Addr().String()+"\nlog: {level: debug}\ndrain: {delay: 2s}\n")
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	wait.For(t, "load on b", func() bool { return ld.saw("b") })
	ld.end(t)

	if sc.front.list()[0] == before {
		t.Fatal("the upstream changed but the listener kept its server")
	}
	if got := sc.logs.level.Level(); got != zapcore.DebugLevel {
		t.Fatalf("log level after the reload: %s, want debug", got)
	}
	if d := sc.live().Drain.Delay; d != 2*time.Second {
		t.Fatalf("drain delay after the reload: %s, want 2s", d)
	}
	if n := testutil.ToFloat64(sc.reloads.total.WithLabelValues("success")); n != 1 {
		t.Fatalf("tidegate_config_reloads_total{result=success} = %v, want 1", n)
	}
	out := sc.lastReload.Load()
	if out == nil || out.Result != "success" || !strings.Contains(strings.Join(out.Changed, ","), "upstream.address") {
		t.Fatalf("last reload: %+v", out)
	}
	release <- struct{}{} // the slow request on a, served by the old server
	if got := <-slow; got != "200a" {
		t.Fatalf("the request in flight across the reload got %q, want 200a", got)
	}
}

func oneShotBody(url string) (string, string) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 20 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "error", err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Status[:3], string(b)
}

// TestReloadRefusesBadConfig: a bad file changes nothing, says why, and
// is counted; the next good one applies.
func TestReloadRefusesBadConfig(t *testing.T) {
	app := namedApp(t, "a", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	health := freePort(t)
	good := "listen: 127.0.0.1:0\nhealth_listen: " + health + "\nadmin_listen: 127.0.0.1:0\nupstream: " + app.Listener.Addr().String() + "\n"
	writeConfig(t, file, good)
	sc, sig, _ := startWith(t, "--config", file)
	public := "http://" + sc.publicAddr()
	hash := configHash(sc.conf.Load())

	for i, c := range []struct{ body, want string }{
		{good + "drain: [\n", "not valid YAML"},
		{good + "drain: {delay: -1s}\n", `drain.delay: "-1s" is negative`},
		{good + "drian: {delay: 1s}\n", `unknown key "drian"`},
		{strings.Replace(good, health, "127.0.0.1:0", 1), "health_listen changed"},
		{good + "access_log: " + filepath.Join(t.TempDir(), "missing", "access.log") + "\n", "access_log"},
	} {
		writeConfig(t, file, c.body)
		sig <- syscall.SIGHUP
		wait.For(t, "the reload refused", func() bool {
			return testutil.ToFloat64(sc.reloads.total.WithLabelValues("failure")) == float64(i+1)
		})
		out := sc.lastReload.Load()
		if out.Result != "failure" || !strings.Contains(out.Error, c.want) {
			t.Fatalf("reload %d: %+v, want a failure saying %q", i, out, c.want)
		}
		if v := sc.version.Load(); v != 1 || configHash(sc.conf.Load()) != hash {
			t.Fatalf("reload %d was refused but the config changed (version %d)", i, v)
		}
		if code, err := oneShot(public); code != 200 {
			t.Fatalf("after a refused reload: %d %v", code, err)
		}
	}
	if testutil.ToFloat64(sc.reloads.successful) != 0 {
		t.Fatal("tidegate_config_last_reload_successful is not 0 after a refused reload")
	}
	writeConfig(t, file, good+"log: {level: warn}\n")
	sig <- syscall.SIGHUP
	wait.For(t, "the good reload applied", func() bool { return sc.version.Load() == 2 })
	if testutil.ToFloat64(sc.reloads.successful) != 1 {
		t.Fatal("tidegate_config_last_reload_successful is not 1 after a good reload")
	}
}

// freePort returns a loopback address with a port free now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestReloadKeepsWhatDidNotChange: a reload that changes only the log
// level keeps the listener's server and its keep-alive connections.
func TestReloadKeepsWhatDidNotChange(t *testing.T) {
	app := namedApp(t, "a", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	base := "listen: 127.0.0.1:0\nhealth_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + app.Listener.Addr().String() + "\n"
	writeConfig(t, file, base)
	sc, sig, _ := startWith(t, "--config", file)
	before := sc.front.list()[0]

	conn, err := net.Dial("tcp", sc.publicAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() string {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufioReader(conn), nil)
		if err != nil {
			t.Fatalf("the keep-alive connection after the reload: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.Header.Get("Connection") + "|" + string(b)
	}
	if got := ask(); got != "|a" {
		t.Fatalf("before the reload: %q", got)
	}
	writeConfig(t, file, base+"log: {level: error}\n")
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	if sc.front.list()[0] != before {
		t.Fatal("a reload that changed only the log level replaced the listener's server")
	}
	if got := ask(); got != "|a" {
		t.Fatalf("after the reload the same connection answered %q, want a kept-alive answer", got)
	}
}

// TestReloadMovesAListener: a new address serves at once; the old one
// answers through drain.delay, then refuses.
func TestReloadMovesAListener(t *testing.T) {
	app := namedApp(t, "a", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	p1, p2 := freePort(t), freePort(t)
	base := "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ndrain: {delay: 300ms}\nupstream: " + app.Listener.Addr().String() + "\n"
	writeConfig(t, file, base+"listen: "+p1+"\n")
	sc, sig, _ := startWith(t, "--config", file)

	writeConfig(t, file, base+"listen: "+p2+"\n")
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	if code, err := oneShot("http://" + p2); code != 200 {
		t.Fatalf("the new address: %d %v", code, err)
	}
	if sc.publicAddr() != p2 {
		t.Fatalf("public address %s, want %s", sc.publicAddr(), p2)
	}
	wait.Until(t, 5*time.Second, "the old address closed after the delay", func() (bool, string) {
		c, err := net.DialTimeout("tcp", p1, time.Second)
		if err != nil {
			return true, ""
		}
		_ = c.Close()
		return false, "still accepting"
	})
}

// TestStraySignalsDoNotStopTidegate: SIGUSR2, SIGWINCH, SIGPIPE and
// SIGUSR1 change nothing that a client sees; SIGTERM still drains.
func TestStraySignalsDoNotStopTidegate(t *testing.T) {
	app := namedApp(t, "a", nil)
	logFile := filepath.Join(t.TempDir(), "access.log")
	sc, sig, reports := startWith(t, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String(), "--access-log="+logFile, "--drain-delay", "0s", "--drain-quiet", "0s")
	public := "http://" + sc.publicAddr()
	for _, s := range []syscall.Signal{syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGPIPE, syscall.SIGUSR1} {
		sig <- s
	}
	if code, err := oneShot(public); code != 200 {
		t.Fatalf("after stray signals: %d %v", code, err)
	}
	if p := sc.life.Phase(); p != drain.Serving {
		t.Fatalf("phase %s after stray signals, want serving", p)
	}

	// SIGUSR1 reopens the access log: logrotate moved the file away.
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	sig <- syscall.SIGUSR1
	wait.Until(t, 5*time.Second, "a line in the reopened access log", func() (bool, string) {
		if code, err := oneShot(public + "/after-reopen"); code != 200 {
			return false, err.Error()
		}
		b, _ := os.ReadFile(logFile)
		return strings.Contains(string(b), "/after-reopen"), string(b)
	})

	sig <- syscall.SIGTERM
	select {
	case rep := <-reports:
		if rep.Trigger != "SIGTERM" {
			t.Fatalf("drain trigger %q, want SIGTERM", rep.Trigger)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM did not drain")
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// writeTestCert writes a self-signed certificate with the given serial,
// and its key, into dir (the same names each time).
func writeTestCert(t *testing.T, dir string, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "tidegate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeConfig(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeConfig(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
	return certFile, keyFile
}

// TestReloadRenewsTheCertificateAndMovesTheAccessLog: SIGHUP reads a
// renewed certificate at once (the listener keeps its server and its
// connections), a new access log path takes the next lines, and a broken
// certificate is refused.
func TestReloadRenewsTheCertificateAndMovesTheAccessLog(t *testing.T) {
	app := namedApp(t, "a", nil)
	dir := t.TempDir()
	certFile, keyFile := writeTestCert(t, dir, 1)
	file := filepath.Join(dir, "tidegate.yaml")
	logA, logB := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	base := "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + app.Listener.Addr().String() +
		"\nlisteners:\n  - {name: web, address: \"127.0.0.1:0\", tls: {cert: " + certFile + ", key: " + keyFile + "}}\n"
	writeConfig(t, file, base+"access_log: "+logA+"\n")
	sc, sig, _ := startWith(t, "--config", file)
	before := sc.front.list()[0]
	url := "https://" + sc.publicAddr() + "/"

	serialOf := func(path string) int64 {
		t.Helper()
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a self-signed test certificate
		resp, err := c.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serialOf("first"); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}

	writeTestCert(t, dir, 2)
	writeConfig(t, file, base+"access_log: "+logB+"\n")
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	if got := serialOf("second"); got != 2 {
		t.Fatalf("serial %d after the reload, want 2 (the renewed certificate, at once)", got)
	}
	if sc.front.list()[0] != before {
		t.Fatal("a renewed certificate under the same names replaced the listener's server")
	}
	wait.Until(t, 5*time.Second, "the access log lines in their files", func() (bool, string) {
		a, _ := os.ReadFile(logA)
		b, _ := os.ReadFile(logB)
		return strings.Contains(string(a), "/first") && strings.Contains(string(b), "/second") && !strings.Contains(string(a), "/second"),
			"a.log: " + string(a) + "\nb.log: " + string(b)
	})

	writeConfig(t, certFile, "not a certificate")
	sig <- syscall.SIGHUP
	wait.For(t, "the reload refused", func() bool { return testutil.ToFloat64(sc.reloads.total.WithLabelValues("failure")) == 1 })
	if out := sc.lastReload.Load(); !strings.Contains(out.Error, certFile) {
		t.Fatalf("the refusal does not name the certificate file: %+v", out)
	}
	if got := serialOf("third"); got != 2 {
		t.Fatalf("serial %d after a refused reload, want 2", got)
	}
}

// TestAccessLogToAPipeWithoutAReaderDoesNotBlock: SIGUSR1 with the access
// log on a named pipe nobody reads is refused at once (logged), and the
// event loop keeps turning: SIGTERM still drains.
func TestAccessLogToAPipeWithoutAReaderDoesNotBlock(t *testing.T) {
	app := namedApp(t, "a", nil)
	fifo := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a reader for the start
	if err != nil {
		t.Fatal(err)
	}
	sc, sig, reports := startWith(t, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String(), "--access-log="+fifo, "--drain-delay", "0s", "--drain-quiet", "0s")
	_ = f.Close() // the reader goes away
	sig <- syscall.SIGUSR1
	sig <- syscall.SIGTERM
	select {
	case rep := <-reports:
		if rep.Trigger != "SIGTERM" {
			t.Fatalf("drain trigger %q", rep.Trigger)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM after SIGUSR1 did not drain: the event loop is stuck opening the pipe")
	}
	_ = sc
}
