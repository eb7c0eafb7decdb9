package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/tidegate/tidegate/proxy"
)

// `tidegate prestop` is the app container's preStop hook when the app had
// one of its own: a container has a single preStop handler, so the
// injector replaces it with this command, which first drains the sidecar
// (GET /drain?wait= on its health listener, with the drain token) and then
// ALWAYS runs the original hook, even when the drain call failed: the app's
// own shutdown step must not depend on tidegate. The exit status is the
// hook's, so the kubelet reports the hook as it would have.

// prestopHTTPMin is the least time the --then-http-get request gets; it
// gets --wait if that is longer. The kubelet's grace period bounds the
// whole hook anyway.
const prestopHTTPMin = 10 * time.Second

// prestopDrainSlack is added to --wait to bound the drain call: the
// sidecar answers within --wait, this is for the connection.
const prestopDrainSlack = 10 * time.Second

// podAddressLookupBound bounds resolving the pod's host name for an empty
// --then-http-get host.
const podAddressLookupBound = 2 * time.Second

// headerList is the repeatable --then-header 'Name: value'.
type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

// prestopHook is the original hook: one of sleep, http or exec (or none).
type prestopHook struct {
	sleep   time.Duration
	httpURL *url.URL
	header  http.Header
	command []string
}

func writePrestopUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: tidegate prestop --health ADDR (--token TOKEN | --token-file FILE) --wait DURATION
                        [--then-sleep DURATION | --then-http-get URL [--then-header 'Name: value']... | -- COMMAND ARGS...]

A preStop hook that drains the tidegate sidecar, then runs the container's
original preStop hook. It calls GET http://ADDR/drain?wait=DURATION with header
X-Tidegate-Drain-Token (bounded by the wait + 10s), which returns once the
drain has reached stopping_app; then, ALWAYS (even if that call failed), the
original hook: --then-sleep sleeps; --then-http-get sends a GET (an empty host,
as in http://:8080/stop, means the pod's own address; 2xx and 3xx are success;
HTTPS certificates are not verified, as the kubelet does; bounded by the longer
of --wait and 10s); a command after -- runs with this process's stdin, stdout
and stderr, and gets the signals this process gets. The exit status is the
hook's (0 for a sleep; 0 or 1 for an HTTP GET; the command's own, 128+N if it
died of signal N); without a hook, 0 if the drain was reached, else 1.
Exit 2: bad usage.

  --health ADDR        the sidecar's health listener (default 127.0.0.1:8081)
  --token TOKEN        the drain token (default $TIDEGATE_DRAIN_TOKEN)
  --token-file FILE    read the drain token from FILE (the drain-token file the
                       sidecar's --copy-binary-to writes), if --token is not given
  --wait DURATION      how long the sidecar may take to reach stopping_app (default 30s)
  --then-sleep DURATION
  --then-http-get URL
  --then-header 'Name: value'   repeatable, with --then-http-get
`)
}

// prestopCmd is `tidegate prestop`.
func prestopCmd(args []string, e env) int {
	logf := func(format string, a ...any) { fmt.Fprintf(e.stderr, "tidegate prestop: "+format+"\n", a...) }
	usage := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "tidegate prestop: "+format+" (see tidegate prestop --help)\n", a...)
		return 2
	}
	var command []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, command = args[:i], args[i+1:]
		if len(command) == 0 {
			return usage("nothing after --: give the original hook's command, as in -- /bin/sh -c 'nginx -s quit'")
		}
	}
	fs := flag.NewFlagSet("tidegate prestop", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	health := fs.String("health", "127.0.0.1:8081", "")
	token := fs.String("token", "", "")
	tokenFile := fs.String("token-file", "", "")
	wait := fs.String("wait", "30s", "")
	thenSleep := fs.String("then-sleep", "", "")
	thenHTTP := fs.String("then-http-get", "", "")
	var headers headerList
	fs.Var(&headers, "then-header", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writePrestopUsage(e.stdout)
			return 0
		}
		return usage("%v", err)
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q: the original hook's command goes after --", fs.Arg(0))
	}
	waitDur, err := parseDuration(*wait)
	if err != nil {
		return usage("--wait: %v", err)
	}
	if *token == "" && *tokenFile != "" {
		b, err := readSmallFile(*tokenFile, maxTokenFile)
		if err != nil {
			return usage("--token-file %s: %v: it is where the sidecar's --copy-binary-to writes the drain token", *tokenFile, err)
		}
		*token = strings.TrimSpace(string(b))
	}
	if *token == "" {
		*token = e.getenv("TIDEGATE_DRAIN_TOKEN")
	}
	if *token == "" {
		return usage("--token: no drain token: give --token, --token-file or TIDEGATE_DRAIN_TOKEN (the sidecar's --drain-token)")
	}
	drainURL, err := prestopDrainURL(*health, waitDur)
	if err != nil {
		return usage("--health %q: %v", *health, err)
	}
	// A bad hook argument must not cost the drain: it is reported, with
	// exit 2, after the drain (the drain's own flags are checked above).
	var hook prestopHook
	var hookErr string
	hookUsage := func(format string, a ...any) {
		if hookErr == "" {
			hookErr = fmt.Sprintf(format, a...)
		}
	}
	given := 0
	if *thenSleep != "" {
		given++
		if hook.sleep, err = parseDuration(*thenSleep); err != nil {
			hookUsage("--then-sleep: %v", err)
		}
	}
	if *thenHTTP != "" {
		given++
		u, err := url.Parse(*thenHTTP)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Opaque != "" {
			hookUsage("--then-http-get %q: want an http:// or https:// URL, like http://:8080/shutdown", redactURLs(*thenHTTP))
		}
		hook.httpURL = u
	}
	if len(command) > 0 {
		given++
		hook.command = command
	}
	if given > 1 {
		hookUsage("give at most one of --then-sleep, --then-http-get and -- COMMAND: a container has one preStop hook")
	}
	if len(headers) > 0 && hook.httpURL == nil {
		hookUsage("--then-header needs --then-http-get")
	}
	hook.header = http.Header{}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if !ok || !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(strings.TrimSpace(value)) {
			hookUsage("--then-header %q: want 'Name: value'", h)
			continue
		}
		hook.header.Add(name, strings.TrimSpace(value))
	}

	// The drain: its failure is logged, never fatal.
	ctx, stop := signalContext(e.signals, syscall.SIGTERM, syscall.SIGINT)
	drained := prestopDrain(ctx, drainURL, *token, waitDur, logf)
	stop()
	if hookErr != "" {
		return usage("%s (the drain ran; the original hook did not)", hookErr)
	}

	switch {
	case hook.sleep > 0 || *thenSleep != "":
		return prestopSleep(hook.sleep, e.signals, logf)
	case hook.httpURL != nil:
		return prestopHTTP(hook.httpURL, hook.header, max(waitDur, prestopHTTPMin), e.signals, logf)
	case hook.command != nil:
		return prestopExec(hook.command, e, logf)
	}
	if !drained {
		return 1
	}
	return 0
}

// prestopDrainURL is http://ADDR/drain?wait=DUR; a wildcard host (":8081",
// "0.0.0.0:8081") is reached on 127.0.0.1.
func prestopDrainURL(addr string, wait time.Duration) (string, error) {
	host, port, err := proxy.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, fmt.Sprint(port)), Path: "/drain", RawQuery: "wait=" + formatDuration(wait)}
	return u.String(), nil
}

// prestopDrain calls the sidecar's GET /drain and reports whether the drain
// reached stopping_app. It logs one line.
func prestopDrain(ctx context.Context, drainURL, token string, wait time.Duration, logf func(string, ...any)) bool {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, wait+prestopDrainSlack)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, drainURL, http.NoBody)
	req.Header.Set(DrainTokenHeader, token)
	req.Header.Set("User-Agent", "tidegate-prestop")
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		logf("drain: GET %s failed after %s: %v; running the original hook anyway", drainURL, took, err)
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var answer struct {
		Phase string `json:"phase"`
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &answer)
	if resp.StatusCode == http.StatusOK {
		logf("drain: reached phase %s after %s", answer.Phase, took)
		return true
	}
	detail := answer.Error
	if detail == "" {
		detail = strings.TrimSpace(string(body))
	}
	logf("drain: GET %s answered %s after %s (phase %q: %s); running the original hook anyway", drainURL, resp.Status, took, answer.Phase, detail)
	return false
}

// signalContext is a context canceled when one of sigs arrives on signals
// (which may be nil); stop ends the watch. Other signals are dropped.
func signalContext(signals <-chan os.Signal, sigs ...os.Signal) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case s := <-signals:
				if slices.Contains(sigs, s) {
					cancel()
					return
				}
			case <-done:
				return
			}
		}
	}()
	return ctx, func() { close(done); <-finished; cancel() }
}

// killedBy is the exit status of a process that died of sig, as a shell
// reports it.
func killedBy(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}

func prestopSleep(d time.Duration, signals <-chan os.Signal, logf func(string, ...any)) int {
	logf("hook: sleep %s", d)
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			logf("hook: slept %s; exit 0", d)
			return 0
		case s := <-signals:
			if s == syscall.SIGTERM || s == syscall.SIGINT {
				logf("hook: sleep ended by %s; exit %d", signalName(s), killedBy(s))
				return killedBy(s)
			}
		}
	}
}

// prestopHTTP sends the original httpGet hook: success is 2xx or 3xx (no
// redirect is followed), as the kubelet counts it.
func prestopHTTP(u *url.URL, header http.Header, bound time.Duration, signals <-chan os.Signal, logf func(string, ...any)) int {
	target := *u
	if target.Hostname() == "" {
		host := podAddress(os.Hostname, net.DefaultResolver.LookupHost)
		port := target.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[target.Scheme]
		}
		target.Host = net.JoinHostPort(host, port)
	}
	shown := shownProbeURL(target.String())
	ctx, stop := signalContext(signals, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), http.NoBody)
	if err != nil {
		logf("hook: GET %s: %v; exit 1", shown, err)
		return 1
	}
	req.Header = header.Clone()
	if h := header.Get("Host"); h != "" {
		req.Host = h
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "tidegate-prestop")
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // the kubelet does not verify hook certificates either
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		logf("hook: GET %s failed: %v; exit 1", shown, err)
		return 1
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		logf("hook: GET %s answered %s; exit 0", shown, resp.Status)
		return 0
	}
	logf("hook: GET %s answered %s; exit 1", shown, resp.Status)
	return 1
}

// podAddress is the pod's own address, where the kubelet sends an httpGet
// hook without a host: the first address of the host name, or 127.0.0.1
// if it does not resolve (within podAddressLookupBound).
func podAddress(hostname func() (string, error), lookup func(context.Context, string) ([]string, error)) string {
	name, err := hostname()
	if err != nil || name == "" {
		return "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), podAddressLookupBound)
	defer cancel()
	addrs, err := lookup(ctx, name)
	if err != nil || len(addrs) == 0 {
		return "127.0.0.1"
	}
	return addrs[0]
}

// prestopExec runs the original exec hook with this process's stdin,
// stdout and stderr, passes it every signal this process gets, and
// returns its exit status.
func prestopExec(command []string, e env, logf func(string, ...any)) int {
	logf("hook: exec %s", redactURLs(strings.Join(command, " ")))
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, e.stdout, e.stderr
	if err := cmd.Start(); err != nil {
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		logf("hook: cannot run %s: %v; exit %d", command[0], err, code)
		return code
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	for {
		select {
		case s := <-e.signals:
			_ = cmd.Process.Signal(s)
		case err := <-waited:
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					code = killedBy(ws.Signal())
				}
			} else if err != nil {
				code = 1
			}
			logf("hook: %s exited %d", command[0], code)
			return code
		}
	}
}

// maxTokenFile bounds what --token-file reads: a token is 32 hex digits.
const maxTokenFile = 4096

// readSmallFile reads at most max bytes of path; a longer file is an error.
func readSmallFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("longer than %d bytes: not a drain token", max)
	}
	return b, nil
}
