package e2e

import (
	"context"
	"encoding/xml"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
	"github.com/tidegate/tidegate/test/need"
)

// h2specTimeout bounds one whole h2spec run (about 150 cases, each bounded
// by h2spec's own --timeout).
const h2specTimeout = 3 * time.Minute

// h2specAllowed are the h2spec cases tidegate is allowed to fail, by
// "section/number", with the case's description and the reason. 3.5/2 sends
// "INVALID CONNECTION PREFACE\r\n\r\n" and wants a connection error; a
// listener that serves HTTP/1.1 and h2c on one port reads it as a malformed
// HTTP/1.1 request and answers 400, as net/http does.
var h2specAllowed = map[string]string{
	"http2/3.5/2": "Sends invalid connection preface",
}

// TestH2Spec runs h2spec, the HTTP/2 conformance suite, against tidegate's
// prior-knowledge h2c server: with the default upstream protocol in front of
// an HTTP/1.1 app (every stream goes through the handler and is sent on as
// HTTP/1.1), and with --upstream-protocol h2c in front of an h2c app (every
// stream is spliced to the app over HTTP/2). Every case must pass but
// h2specAllowed.
func TestH2Spec(t *testing.T) {
	h2spec := requireGoTool(t, "h2spec")

	t.Run("auto-http1-app", func(t *testing.T) {
		app := fakeapp.Start(t)
		tg := start(t, "--upstream", app.Addr)
		runH2Spec(t, h2spec, tg, "/status")
		if n := app.Requests("/status"); n == 0 {
			t.Fatalf("no h2spec request reached the HTTP/1.1 app")
		}
		tg.stop()
	})

	t.Run("h2c-splice", func(t *testing.T) {
		app := startH2CApp(t)
		tg := start(t, "--upstream", app.Addr, "--upstream-protocol", "h2c")
		runH2Spec(t, h2spec, tg, "/status")
		h2, h1 := app.h2.Load(), app.h1.Load()
		if h2 == 0 || h1 != 0 {
			t.Fatalf("the h2c app saw %d HTTP/2 and %d HTTP/1.x requests, want some HTTP/2 and no HTTP/1.x", h2, h1)
		}
		tg.stop()
	})
}

// runH2Spec runs h2spec against tg's listener for path (which must answer
// 200), reads its JUnit report, and fails the test for every case that did
// not pass and is not in h2specAllowed, and if an allowed case passed.
func runH2Spec(t *testing.T, h2spec string, tg *tidegate, path string) {
	t.Helper()
	host, port, err := net.SplitHostPort(tg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	ctx, cancel := context.WithTimeout(context.Background(), h2specTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h2spec, "-h", host, "-p", port, "-P", path, "--timeout", "2", "-j", report)
	out, runErr := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("h2spec did not finish within %s\n%s", h2specTimeout, tail(string(out), 16<<10))
	}
	// h2spec exits 1 when any case fails; the report says which.
	var ee *exec.ExitError
	if runErr != nil && !errors.As(runErr, &ee) {
		t.Fatalf("h2spec: %v\n%s", runErr, out)
	}
	cases, err := readH2SpecReport(report)
	if err != nil {
		t.Fatalf("h2spec (exit: %v) left no readable JUnit report: %v\n%s", runErr, err, tail(string(out), 16<<10))
	}

	passed := 0
	var unexpected, allowedFailed []string
	for _, c := range cases {
		if c.outcome == "" {
			passed++
			if _, ok := h2specAllowed[c.id]; ok {
				t.Errorf("h2spec %s (%s) passed, but it is listed as an allowed failure: update h2specAllowed", c.id, c.desc)
			}
			continue
		}
		if desc, ok := h2specAllowed[c.id]; ok && c.desc == desc {
			allowedFailed = append(allowedFailed, c.id)
			continue
		}
		unexpected = append(unexpected, c.id+" "+c.desc+" ("+c.outcome+"):\n\t"+strings.ReplaceAll(strings.TrimSpace(c.message), "\n", "\n\t"))
	}
	if len(cases) < 100 {
		t.Errorf("the h2spec report holds %d cases, want over 100\n%s", len(cases), tail(string(out), 16<<10))
	}
	for id, desc := range h2specAllowed {
		found := false
		for _, c := range cases {
			found = found || c.id == id
		}
		if !found {
			t.Errorf("the h2spec report lacks the allowed case %s (%s): are the case numbers still right?", id, desc)
		}
	}
	if len(unexpected) > 0 {
		t.Errorf("%d h2spec cases failed unexpectedly:\n%s\n--- h2spec output (with what each case expected) ---\n%s",
			len(unexpected), strings.Join(unexpected, "\n"), tail(string(out), 16<<10))
	}
	sort.Strings(allowedFailed)
	t.Logf("h2spec: %d cases, %d passed, %d allowed failures %v, %d unexpected", len(cases), passed, len(allowedFailed), allowedFailed, len(unexpected))
}

// h2specCase is one test case of h2spec's JUnit report.
type h2specCase struct {
	id      string // "http2/3.5/2": the group, and the case's number in it
	desc    string // "Sends invalid connection preface"
	outcome string // "" (passed), "failure", "error" or "skipped"
	message string
}

// readH2SpecReport reads h2spec's JUnit report. h2spec names each case's
// group in the package attribute and its description in classname; the
// cases of a group come in order, so the case's number (as h2spec prints
// it, and as its section arguments take it) is its position in the group.
func readH2SpecReport(path string) ([]h2specCase, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	type content struct {
		Text string `xml:",innerxml"`
	}
	var rep struct {
		Suites []struct {
			Name  string `xml:"name,attr"`
			Cases []struct {
				Package   string   `xml:"package,attr"`
				ClassName string   `xml:"classname,attr"`
				Failure   *content `xml:"failure"`
				Error     *content `xml:"error"`
				Skipped   *content `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &rep); err != nil {
		return nil, err
	}
	var cases []h2specCase
	seq := map[string]int{}
	for _, s := range rep.Suites {
		for _, tc := range s.Cases {
			group := tc.Package
			if group == "" {
				group = s.Name
			}
			seq[group]++
			c := h2specCase{id: group + "/" + strconv.Itoa(seq[group]), desc: tc.ClassName}
			switch {
			case tc.Failure != nil:
				c.outcome, c.message = "failure", tc.Failure.Text
			case tc.Error != nil:
				c.outcome, c.message = "error", tc.Error.Text
			case tc.Skipped != nil:
				c.outcome, c.message = "skipped", tc.Skipped.Text
			}
			cases = append(cases, c)
		}
	}
	if len(cases) == 0 {
		return nil, errors.New("no test cases in " + path)
	}
	return cases, nil
}

// h2cApp is the fakeapp served over HTTP/1.1 and h2c (prior knowledge) on
// one loopback port, counting requests by protocol.
type h2cApp struct {
	*fakeapp.App
	Addr   string
	h1, h2 atomic.Int64
}

// startH2CApp serves a new fakeapp.App with net/http's h2c server; t's
// cleanup closes it.
func startH2CApp(t *testing.T) *h2cApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &h2cApp{App: fakeapp.New(), Addr: ln.Addr().String()}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 {
				a.h2.Add(1)
			} else {
				a.h1.Add(1)
			}
			a.App.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: waitTimeout,
		Protocols:         new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		a.App.Close()
		_ = srv.Close()
		<-done
	})
	return a
}

// requireGoTool is need.Tool for a program installed with `go install`:
// on PATH, or in $(go env GOBIN) or $(go env GOPATH)/bin.
func requireGoTool(t *testing.T, name string) string {
	t.Helper()
	var dirs []string
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		// One line each, GOBIN's empty when unset.
		lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
		if len(lines) == 2 {
			if gobin := strings.TrimSpace(lines[0]); gobin != "" {
				dirs = append(dirs, gobin)
			}
			for _, p := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				dirs = append(dirs, filepath.Join(p, "bin"))
			}
		}
	}
	paths := make([]string, len(dirs))
	for i, d := range dirs {
		paths[i] = filepath.Join(d, name)
	}
	return need.Tool(t, name, paths...)
}
