package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The chaos test: drain cycles of the real binary, each under mixed
// HTTP/1.1 (keep-alive and Connection: close), h2c, gRPC (unary and server
// streams) and WebSocket load, with SIGTERM at a random moment and an app
// (tidegate's child) that is sometimes killed mid-run and answers some
// requests slowly, past the drain deadline. Every request a client sent is
// accounted for afterwards; see chaosCycle.account.
//
// The randomness comes from one seed, printed at the start; the same seed
// gives the same cycles (timings, kinds, crashes, slow requests), though
// not the same interleaving, which the scheduler decides.
//
// Environment:
//
//	TIDEGATE_CHAOS_SEED=N     replay the cycles of seed N (default: a new seed)
//	TIDEGATE_CHAOS_CYCLES=N   run N cycles (default 5, or 50 in the long form)
//	TIDEGATE_CHAOS_ONLY=N     run only cycle N of the seed (to replay one failure)
//	TIDEGATE_ATTACK_LONG=1    the long form, as `make test-attack` runs it
const (
	chaosSeedEnv   = "TIDEGATE_CHAOS_SEED"
	chaosCyclesEnv = "TIDEGATE_CHAOS_CYCLES"
	chaosOnlyEnv   = "TIDEGATE_CHAOS_ONLY"
	attackLongEnv  = "TIDEGATE_ATTACK_LONG"

	chaosShortCycles = 5
	chaosLongCycles  = 50
	// chaosMaxCycles bounds TIDEGATE_CHAOS_CYCLES: each cycle takes about
	// 3s, and the suite runs under a timeout.
	chaosMaxCycles = 500

	// chaosPace is the least time between two requests of one worker, so
	// that the load leaves room for tidegate on a 2-core machine.
	chaosPace = 4 * time.Millisecond
	// chaosMaxPerWorker bounds what one worker sends in one cycle.
	chaosMaxPerWorker = 2000
	// chaosLoadBound ends a cycle's load whatever happens.
	chaosLoadBound = 20 * time.Second
	// chaosClientTimeout bounds each request: much longer than any drain,
	// so that a request that hangs shows as a failure of its own kind.
	chaosClientTimeout = 10 * time.Second
	// chaosDeadlineSlack is how much earlier than "drain started" plus the
	// timeout a failure still counts as at the deadline: the drainer reads
	// its clock before it logs.
	chaosDeadlineSlack = 10 * time.Millisecond
	// chaosNearDeadline is how long before the deadline a complete answer
	// may still be counted cut by the report: tidegate records a request's
	// end after its last byte went out, and a WebSocket's after both sides
	// closed.
	chaosNearDeadline = 100 * time.Millisecond
)

// chaosKinds are the kinds of client load, in the order of the summary.
var chaosKinds = []string{"h1", "h1close", "h2c", "grpc", "grpcstream", "ws"}

// Outcomes of one request, as the accounting decides them.
const (
	outOK        = "ok"         // the whole expected answer
	outRefused   = "refused"    // refused before tidegate accepted it (dial refused, a connection closed before the request was read, 503 from the gate)
	outCut       = "cut"        // accepted, then cut at the drain deadline
	outAppFailed = "app_failed" // the app crashed under it: 502/504 from tidegate, or a stream already answered broken by the crash
	outBug       = "BUG"        // none of the above: accepted and lost, or a wrong answer
)

// chaosReq is what a client saw of one request (or gRPC call, or WebSocket
// session).
type chaosReq struct {
	kind, op, id string
	start, end   time.Time
	status       int    // HTTP status, 0 if none
	answered     bool   // response bytes arrived (headers at least)
	complete     bool   // the whole expected answer arrived
	failure      string // what went wrong, "" if complete
	dialRefused  bool   // the connection was refused (no listener)
	reused       bool   // it went out on a connection used before
	retried      bool   // the client sent it again on a new connection
	tidegate     string // X-Tidegate-Reason of a tidegate answer
	outcome      string // set by account
}

// chaosParams are one cycle's random choices.
type chaosParams struct {
	delay, timeout time.Duration // --drain-delay, --drain-timeout
	sigtermAfter   time.Duration // after the load started
	lbLag          time.Duration // the load keeps sending this long after SIGTERM
	crashAfter     time.Duration // kill the app this long after the load started; 0: no crash
	seed           uint64        // the workers' own randomness
}

func newChaosParams(r *rand.Rand) chaosParams {
	p := chaosParams{
		delay:        time.Duration(100+r.IntN(300)) * time.Millisecond,
		timeout:      time.Duration(1200+r.IntN(800)) * time.Millisecond,
		sigtermAfter: time.Duration(300+r.IntN(900)) * time.Millisecond,
		seed:         r.Uint64(),
	}
	// Up to just past the deadline: some cycles stop sending before the
	// drain closes, some hit the closed listener.
	p.lbLag = time.Duration(r.Int64N(int64(p.timeout + 300*time.Millisecond)))
	if r.IntN(5) < 2 {
		p.crashAfter = time.Duration(100+r.Int64N(int64(p.sigtermAfter+p.delay)/int64(time.Millisecond))) * time.Millisecond
	}
	return p
}

func (p chaosParams) String() string {
	crash := "no crash"
	if p.crashAfter > 0 {
		crash = "crash at " + p.crashAfter.String()
	}
	return fmt.Sprintf("delay %s timeout %s SIGTERM at %s lb lag %s %s", p.delay, p.timeout, p.sigtermAfter, p.lbLag, crash)
}

// chaosTotals sums the cycles.
type chaosTotals struct {
	cycles      int
	byKind      map[string]map[string]int // kind → outcome → requests
	reportedCut int64
	observedCut int
	acceptedCut int // of observedCut, requests tidegate is known to have accepted
	crashes     int
	timeouts    int // drains that ended at the deadline
	durations   []time.Duration
	bugs        []string
}

func TestChaosDrainCycles(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(chaosSeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want the unsigned number a chaos run printed", chaosSeedEnv, s)
		}
		seed = v
	}
	cycles := chaosShortCycles
	if os.Getenv(attackLongEnv) == "1" {
		cycles = chaosLongCycles
	}
	if s := os.Getenv(chaosCyclesEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > chaosMaxCycles {
			t.Fatalf("%s=%q: want a number of cycles from 1 to %d", chaosCyclesEnv, s, chaosMaxCycles)
		}
		cycles = v
	}
	only := -1
	if s := os.Getenv(chaosOnlyEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 || v >= chaosMaxCycles {
			t.Fatalf("%s=%q: want the number of one cycle, from 0 to %d", chaosOnlyEnv, s, chaosMaxCycles-1)
		}
		only, cycles = v, v+1
	}
	t.Logf("chaos: seed %d, %d cycles (replay with %s=%d)", seed, cycles, chaosSeedEnv, seed)

	tot := chaosTotals{byKind: map[string]map[string]int{}}
	for _, k := range chaosKinds {
		tot.byKind[k] = map[string]int{}
	}
	began := time.Now()
	var failed []int
	for i := range cycles {
		if only >= 0 && i != only {
			continue
		}
		p := newChaosParams(rand.New(rand.NewPCG(seed, uint64(i))))
		ok := t.Run(fmt.Sprintf("cycle %d", i), func(t *testing.T) {
			t.Logf("seed %d cycle %d: %s", seed, i, p)
			runChaosCycle(t, p, &tot)
		})
		if !ok {
			// Go on: a long run collects every failure of its seed.
			failed = append(failed, i)
			t.Logf("replay with %s=%d %s=%d (cycle %d failed: %s)", chaosSeedEnv, seed, chaosOnlyEnv, i, i, p)
		}
	}
	chaosSummary(t, seed, &tot, time.Since(began))
	if len(failed) > 0 {
		t.Logf("cycles that failed: %v (replay one with %s=%d %s=N)", failed, chaosSeedEnv, seed, chaosOnlyEnv)
	}
}

// chaosSummary logs (and prints, for the record of a long run) the totals.
func chaosSummary(t *testing.T, seed uint64, tot *chaosTotals, took time.Duration) {
	var b strings.Builder
	fmt.Fprintf(&b, "CHAOS seed %d: %d cycles in %s, %d with an app crash, %d drains ended at the deadline\n",
		seed, tot.cycles, took.Round(time.Millisecond), tot.crashes, tot.timeouts)
	all := map[string]int{}
	for _, k := range chaosKinds {
		n := 0
		for _, v := range tot.byKind[k] {
			n += v
		}
		fmt.Fprintf(&b, "  %-10s %6d requests: %6d ok, %5d refused, %4d cut, %4d app_failed, %d BUG\n", k, n,
			tot.byKind[k][outOK], tot.byKind[k][outRefused], tot.byKind[k][outCut], tot.byKind[k][outAppFailed], tot.byKind[k][outBug])
		for o, v := range tot.byKind[k] {
			all[o] += v
		}
	}
	fmt.Fprintf(&b, "  %-10s %6d requests: %6d ok, %5d refused, %4d cut, %4d app_failed, %d BUG\n", "all",
		all[outOK]+all[outRefused]+all[outCut]+all[outAppFailed]+all[outBug],
		all[outOK], all[outRefused], all[outCut], all[outAppFailed], all[outBug])
	fmt.Fprintf(&b, "  cut: %d in the drain reports; clients saw %d requests fail at the deadline, %d of them known accepted (answered, or seen by the app or the access log)\n",
		tot.reportedCut, tot.observedCut, tot.acceptedCut)
	for _, bug := range tot.bugs {
		fmt.Fprintf(&b, "  BUG: %s\n", bug)
	}
	if len(tot.durations) > 0 {
		d := slices.Clone(tot.durations)
		slices.Sort(d)
		fmt.Fprintf(&b, "  drain duration (SIGTERM to stopped): min %s median %s max %s\n",
			d[0].Round(time.Millisecond), d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	}
	t.Log(b.String())
	if os.Getenv(attackLongEnv) == "1" {
		fmt.Print(b.String())
	}
}

// chaosCycle is one cycle's tidegate, app and load.
type chaosCycle struct {
	t      *testing.T
	p      chaosParams
	tg     *tidegate
	record string // the app's record file (every run of the child appends)
	access string // tidegate's access log

	mu   sync.Mutex
	reqs []*chaosReq

	stopAt atomic.Int64 // unix nanos after which no new request starts; 0: not yet decided
	crashT atomic.Int64 // unix nanos of the app's crash; 0: none
}

func runChaosCycle(t *testing.T, p chaosParams, tot *chaosTotals) {
	dir := t.TempDir()
	cy := &chaosCycle{t: t, p: p, record: filepath.Join(dir, "app.jsonl"), access: filepath.Join(dir, "access.jsonl")}
	app := hostPort(freePort(t))
	cy.tg = start(t, "--upstream", app,
		"--drain-delay", p.delay.String(), "--drain-quiet", "50ms", "--drain-timeout", p.timeout.String(),
		"--access-log="+cy.access,
		// A killed app is restarted; the gate holds requests until it
		// listens again (its readiness probe passes).
		"--app-restart", "always", "--app-restart-backoff", "50ms", "--app-restart-limit", "100",
		"--readiness", "tcp://"+app, "--probe-period", "50ms", "--hold-until-ready", "3s",
		"--", fakeappBinary, "--listen", app, "--h2c", "--on-term", "graceful", "--record", cy.record)
	cy.tg.waitAppListening()

	loadStart := time.Now()
	var wg sync.WaitGroup
	r := rand.New(rand.NewPCG(p.seed, 0))
	workers := []struct {
		kind string
		n    int
		run  func(w int, r *rand.Rand)
	}{
		{"h1", 2, func(w int, r *rand.Rand) { cy.httpWorker("h1", w, r, chaosH1Transport(false)) }},
		{"h1close", 2, func(w int, r *rand.Rand) { cy.httpWorker("h1close", w, r, chaosH1Transport(true)) }},
		{"h2c", 2, func(w int, r *rand.Rand) { cy.httpWorker("h2c", w, r, chaosH2CTransport()) }},
		{"grpc", 2, func(w int, r *rand.Rand) { cy.grpcWorker(w, r, false) }},
		{"grpcstream", 1, func(w int, r *rand.Rand) { cy.grpcWorker(w, r, true) }},
		{"ws", 2, cy.wsWorker},
	}
	for _, k := range workers {
		for w := range k.n {
			wr := rand.New(rand.NewPCG(r.Uint64(), uint64(w)))
			wg.Go(func() { k.run(w, wr) })
		}
	}

	var crashMu sync.Mutex
	crashed := false
	if p.crashAfter > 0 {
		crash := time.AfterFunc(p.crashAfter, func() {
			crashMu.Lock()
			defer crashMu.Unlock()
			if pid := cy.appPID(); pid > 0 && cy.running() {
				cy.crashT.Store(time.Now().UnixNano())
				crashed = syscall.Kill(pid, syscall.SIGKILL) == nil
			}
		})
		defer crash.Stop()
	}
	sigterm := make(chan time.Time, 1)
	term := time.AfterFunc(p.sigtermAfter, func() {
		now := time.Now()
		cy.stopAt.Store(now.Add(p.lbLag).UnixNano())
		_ = cy.tg.cmd.Process.Signal(syscall.SIGTERM)
		sigterm <- now
	})
	defer term.Stop()
	signalled := recv(t, sigterm, p.sigtermAfter+waitTimeout, "the SIGTERM timer")
	code := cy.tg.waitExit(p.timeout + 15*time.Second)
	wg.Wait()
	crashMu.Lock()
	defer crashMu.Unlock()
	// The app's exit is tidegate's: 0 after its graceful stop, or 137 when
	// the crash (SIGKILL) came after SIGTERM, while tidegate was draining
	// or already stopping it.
	if code != 0 && !(code == 137 && crashed && cy.crashT.Load() >= signalled.UnixNano()) {
		t.Errorf("tidegate exited %d, want 0 (the app's graceful exit), or 137 for a crash after SIGTERM", code)
	}
	rep := cy.tg.report()
	t.Logf("load %s before SIGTERM; drain report: result %v cut %v completed %v inflight_at_trigger %v duration %v",
		signalled.Sub(loadStart).Round(time.Millisecond), rep["result"], rep["cut"], rep["completed"], rep["inflight_at_trigger"], rep["duration"])

	cy.account(t, rep, crashed, tot)
}

// running reports whether tidegate has not begun to close its listeners:
// the app may be killed until then.
func (cy *chaosCycle) running() bool {
	select {
	case <-cy.tg.exited:
		return false
	default:
	}
	for _, m := range cy.tg.stdout.jsonLines() {
		if m["msg"] == "phase changed" && m["phase"] == "closing" {
			return false
		}
	}
	return true
}

// appPID is the pid of the app run that listened last.
func (cy *chaosCycle) appPID() int {
	pid := 0
	for _, m := range cy.tg.stdout.jsonLines() {
		if m["event"] == "listening" {
			if v, ok := m["pid"].(float64); ok {
				pid = int(v)
			}
		}
	}
	return pid
}

// sending reports whether a worker may start another request.
func (cy *chaosCycle) sending(deadline time.Time) bool {
	if time.Now().After(deadline) {
		return false
	}
	at := cy.stopAt.Load()
	return at == 0 || time.Now().UnixNano() < at
}

func (cy *chaosCycle) add(q *chaosReq) {
	cy.mu.Lock()
	cy.reqs = append(cy.reqs, q)
	cy.mu.Unlock()
}

// pace waits for the worker's next turn, or returns false when the worker
// should stop.
func (cy *chaosCycle) pace(tick *time.Ticker, deadline time.Time) bool {
	select {
	case <-tick.C:
	case <-cy.tg.exited:
		return false
	}
	return cy.sending(deadline)
}

func chaosH1Transport(close bool) *http.Transport {
	return &http.Transport{Proxy: nil, DisableCompression: true, DisableKeepAlives: close, MaxIdleConnsPerHost: 1,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
}

func chaosH2CTransport() *http.Transport {
	tr := &http.Transport{Proxy: nil, DisableCompression: true,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return tr
}

// httpWorker sends GET /, POST /echo and GET /slow?d= (some slower than
// the drain) until the load stops.
func (cy *chaosCycle) httpWorker(kind string, w int, r *rand.Rand, tr *http.Transport) {
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: chaosClientTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tick := time.NewTicker(chaosPace)
	defer tick.Stop()
	deadline := time.Now().Add(chaosLoadBound)
	for n := 0; n < chaosMaxPerWorker && cy.pace(tick, deadline); n++ {
		q := &chaosReq{kind: kind, id: fmt.Sprintf("%s-%d-%d", kind, w, n)}
		var want func(*http.Response, []byte) string
		var req *http.Request
		switch x := r.IntN(10); {
		case x < 6:
			q.op = "GET /"
			req, _ = http.NewRequest(http.MethodGet, cy.tg.URL("/"), nil)
			want = func(resp *http.Response, body []byte) string {
				if !strings.HasPrefix(string(body), "ok ") {
					return fmt.Sprintf("body %q, want ok <instance>", body)
				}
				return ""
			}
		case x < 8:
			body := bytes.Repeat([]byte{byte('a' + r.IntN(26))}, 1+r.IntN(64<<10))
			sum := sha256.Sum256(body)
			q.op = fmt.Sprintf("POST /echo (%d bytes)", len(body))
			req, _ = http.NewRequest(http.MethodPost, cy.tg.URL("/echo"), bytes.NewReader(body))
			want = func(resp *http.Response, got []byte) string {
				if !bytes.Contains(got, []byte(`"body_sha256":"`+hex.EncodeToString(sum[:])+`"`)) {
					return fmt.Sprintf("echo %.200q does not carry the body's sha256", got)
				}
				return ""
			}
		default:
			d := time.Duration(r.IntN(2500)) * time.Millisecond
			q.op = "GET /slow?d=" + d.String()
			req, _ = http.NewRequest(http.MethodGet, cy.tg.URL("/slow?d="+d.String()), nil)
			want = func(resp *http.Response, body []byte) string {
				if string(body) != "slept "+d.String()+"\n" {
					return fmt.Sprintf("body %q, want slept %s", body, d)
				}
				return ""
			}
		}
		req.Header.Set("X-Request-Id", q.id)
		// net/http sends an idempotent request again, on a new connection,
		// when a reused one breaks before the answer: GetConn runs once per
		// try, even when the new connection is refused.
		tries, conns := 0, 0
		req = req.WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GetConn: func(string) { tries++ },
			GotConn: func(info httptrace.GotConnInfo) {
				conns++
				if conns == 1 {
					q.reused = info.Reused
				}
			},
			GotFirstResponseByte: func() { q.answered = true },
		}))
		q.start = time.Now()
		resp, err := c.Do(req)
		var body []byte
		if err == nil {
			q.status = resp.StatusCode
			q.tidegate = resp.Header.Get("X-Tidegate-Reason")
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		q.end = time.Now()
		q.retried = tries > 1
		switch {
		case err != nil:
			q.failure = err.Error()
			q.dialRefused = isDialRefused(err)
		case resp.StatusCode != http.StatusOK:
			q.failure = fmt.Sprintf("status %d: %.200q", resp.StatusCode, body)
		default:
			if f := want(resp, body); f != "" {
				q.failure = f
			} else {
				q.complete = true
			}
		}
		cy.add(q)
	}
}

// isDialRefused reports whether err is a refused connection attempt.
func isDialRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" && errors.Is(err, syscall.ECONNREFUSED)
}

// grpcWorker makes unary calls, or server-streaming calls of a few
// messages at random intervals, until the load stops.
func (cy *chaosCycle) grpcWorker(w int, r *rand.Rand, stream bool) {
	kind := "grpc"
	if stream {
		kind = "grpcstream"
	}
	conn, err := grpc.NewClient(cy.tg.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cy.add(&chaosReq{kind: kind, id: "client", op: "grpc.NewClient", failure: err.Error(), start: time.Now(), end: time.Now()})
		return
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)
	tick := time.NewTicker(chaosPace)
	defer tick.Stop()
	deadline := time.Now().Add(chaosLoadBound)
	for n := 0; n < chaosMaxPerWorker && cy.pace(tick, deadline); n++ {
		q := &chaosReq{kind: kind, id: fmt.Sprintf("%s-%d-%d", kind, w, n)}
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-request-id", q.id), chaosClientTimeout)
		q.start = time.Now()
		if !stream {
			size := int32(1 + r.IntN(4096))
			q.op = fmt.Sprintf("UnaryCall (%d bytes)", size)
			var hdr metadata.MD
			resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: size}, grpc.Header(&hdr))
			switch {
			case err != nil:
				cy.grpcFailure(q, err)
				if len(hdr) > 0 {
					q.answered = true // the app's answer began: headers came
				}
			case len(resp.GetPayload().GetBody()) != int(size):
				q.answered, q.failure = true, fmt.Sprintf("payload of %d bytes, want %d", len(resp.GetPayload().GetBody()), size)
			default:
				q.answered, q.complete = true, true
			}
		} else {
			params := make([]*testpb.ResponseParameters, 2+r.IntN(6))
			var span time.Duration
			for i := range params {
				d := time.Duration(20+r.IntN(200)) * time.Millisecond
				span += d
				params[i] = &testpb.ResponseParameters{Size: 64, IntervalUs: int32(d / time.Microsecond)}
			}
			q.op = fmt.Sprintf("StreamingOutputCall (%d messages over %s)", len(params), span)
			cy.grpcStream(ctx, client, q, len(params), params)
		}
		cancel()
		q.end = time.Now()
		cy.add(q)
	}
}

func (cy *chaosCycle) grpcStream(ctx context.Context, client testpb.TestServiceClient, q *chaosReq, want int, params []*testpb.ResponseParameters) {
	s, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params})
	if err != nil {
		cy.grpcFailure(q, err)
		return
	}
	if _, err := s.Header(); err == nil {
		q.answered = true
	}
	got := 0
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			cy.grpcFailure(q, err)
			if got > 0 {
				q.answered = true
			}
			q.failure = fmt.Sprintf("after %d of %d messages: %s", got, want, q.failure)
			return
		}
		if len(m.GetPayload().GetBody()) != 64 {
			q.failure = fmt.Sprintf("message %d: %d bytes, want 64", got, len(m.GetPayload().GetBody()))
			return
		}
		got++
	}
	if got != want {
		q.failure = fmt.Sprintf("stream ended after %d of %d messages", got, want)
		return
	}
	q.complete = true
}

// grpcFailure notes a failed call: grpc-go reports tidegate's own answers
// (502, 503, 504) as Unavailable with the HTTP status in the message.
func (cy *chaosCycle) grpcFailure(q *chaosReq, err error) {
	q.failure = err.Error()
	st, _ := status.FromError(err)
	msg := st.Message()
	for _, code := range []int{http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout} {
		if strings.Contains(msg, "HTTP status code received from server: "+strconv.Itoa(code)) {
			q.status, q.answered, q.tidegate = code, true, "from the message"
			return
		}
	}
	if st.Code() == codes.Unavailable && strings.Contains(msg, "connection refused") {
		q.dialRefused = true
	}
}

// wsWorker opens WebSocket sessions to /ws and echoes a few messages on
// each, at random intervals, until the load stops.
func (cy *chaosCycle) wsWorker(w int, r *rand.Rand) {
	tick := time.NewTicker(chaosPace)
	defer tick.Stop()
	deadline := time.Now().Add(chaosLoadBound)
	for n := 0; n < chaosMaxPerWorker && cy.pace(tick, deadline); n++ {
		q := &chaosReq{kind: "ws", id: fmt.Sprintf("ws-%d-%d", w, n)}
		msgs := 1 + r.IntN(8)
		gaps := make([]time.Duration, msgs)
		for i := range gaps {
			gaps[i] = time.Duration(r.IntN(150)) * time.Millisecond
		}
		q.op = fmt.Sprintf("session of %d messages", msgs)
		q.start = time.Now()
		cy.wsSession(q, gaps)
		q.end = time.Now()
		cy.add(q)
	}
}

func (cy *chaosCycle) wsSession(q *chaosReq, gaps []time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), chaosClientTimeout)
	defer cancel()
	tr := chaosH1Transport(true)
	defer tr.CloseIdleConnections()
	c, resp, err := websocket.Dial(ctx, "ws://"+cy.tg.Listen+"/ws", &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr}, HTTPHeader: http.Header{"X-Request-Id": {q.id}}})
	if err != nil {
		q.failure = err.Error()
		q.dialRefused = isDialRefused(err)
		if resp != nil {
			q.status, q.answered, q.tidegate = resp.StatusCode, true, resp.Header.Get("X-Tidegate-Reason")
		}
		return
	}
	q.answered, q.status = true, http.StatusSwitchingProtocols
	defer c.CloseNow()
	for i, gap := range gaps {
		if gap > 0 {
			timer := time.NewTimer(gap)
			<-timer.C
		}
		msg := fmt.Sprintf("%s message %d", q.id, i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			q.failure = fmt.Sprintf("write %d of %d: %v", i, len(gaps), err)
			return
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			q.failure = fmt.Sprintf("read %d of %d: %v", i, len(gaps), err)
			return
		}
		if string(got) != msg {
			q.failure = fmt.Sprintf("echo %q, want %q", got, msg)
			return
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
		q.failure = "close: " + err.Error()
		return
	}
	q.complete = true
}

// account sorts every request of the cycle into one outcome and checks the
// cycle's invariants:
//
//   - ok: the whole expected answer.
//   - refused: never accepted by tidegate. The connection was refused (the
//     listener closed), or closed before any answer on a request that
//     neither tidegate's access log nor the app ever saw (an idle keep-
//     alive connection closed as the request went out; a connection left in
//     the backlog when the listener closed); or a 503 from the gate.
//   - cut: failed at or after the drain deadline, when tidegate cuts what is
//     left; the drain report must count at least every one of those that
//     was accepted (answered, or seen by the app or the access log).
//   - app_failed: the app crashed under it: answered 502/504 by tidegate,
//     or a stream already answered (gRPC stream, WebSocket) that broke at
//     the crash. A request in flight at the crash must never get an empty
//     reply.
//   - BUG: anything else, such as a request accepted and then dropped
//     before the deadline, or a wrong answer.
func (cy *chaosCycle) account(t *testing.T, rep map[string]any, crashed bool, tot *chaosTotals) {
	var triggered time.Time
	for _, m := range cy.tg.stdout.jsonLines() {
		if m["msg"] == "drain started" {
			triggered = logTime(t, m)
			break
		}
	}
	if triggered.IsZero() {
		t.Fatal(`no "drain started" log line`)
	}
	// The drainer's deadline is its trigger time plus the timeout; the log
	// line comes a moment after the trigger, so allow a little before.
	deadline := triggered.Add(cy.p.timeout - chaosDeadlineSlack)
	seen := cy.seenIDs(t)
	access := cy.accessLog(t)
	var crashAt time.Time
	if ns := cy.crashT.Load(); ns != 0 && crashed {
		crashAt = time.Unix(0, ns)
	}

	counts := map[string]map[string]int{}
	accepted, observedCut, afterDeadline, okNear := 0, 0, 0, 0
	var bugs, cuts []string
	for _, q := range cy.reqs {
		if counts[q.kind] == nil {
			counts[q.kind] = map[string]int{}
		}
		atCut := !q.end.Before(deadline)
		spansCrash := !crashAt.IsZero() && !q.start.After(crashAt.Add(5*time.Millisecond)) && !q.end.Before(crashAt)
		_, known := seen[q.id]
		acceptedHere := q.answered || known
		switch {
		case q.complete:
			q.outcome = outOK
			if !q.end.Before(deadline.Add(-chaosNearDeadline)) {
				okNear++
				cuts = append(cuts, fmt.Sprintf("(complete) %s %s id %s (sent %s, done %s after SIGTERM)",
					q.kind, q.op, q.id, q.start.Sub(triggered).Round(time.Millisecond), q.end.Sub(triggered).Round(time.Millisecond)))
			}
		case q.tidegate != "" && (q.status == http.StatusBadGateway || q.status == http.StatusGatewayTimeout):
			q.outcome = outAppFailed
		case q.tidegate != "" && q.status == http.StatusServiceUnavailable:
			q.outcome = outRefused
		case q.status != 0 && q.status != http.StatusSwitchingProtocols && q.status != http.StatusOK:
			q.outcome = outBug // an answer tidegate does not give
		case q.dialRefused && !q.answered && !q.retried:
			q.outcome = outRefused // the listener was closed (or not yet open)
		case atCut:
			// A request the client sent again (on a reused connection
			// that broke) lands here too: its first try was cut.
			q.outcome = outCut
			afterDeadline++
			if acceptedHere {
				accepted++
			}
			observedCut++
			cuts = append(cuts, fmt.Sprintf("%s %s id %s (sent %s, failed %s after SIGTERM, accepted %v, retried %v): %s",
				q.kind, q.op, q.id, q.start.Sub(triggered).Round(time.Millisecond), q.end.Sub(triggered).Round(time.Millisecond),
				acceptedHere, q.retried, q.failure))
		case spansCrash && q.answered:
			q.outcome = outAppFailed // a stream the crash broke after its answer began
		case !acceptedHere:
			q.outcome = outRefused
		default:
			q.outcome = outBug
		}
		if q.outcome == outRefused && !q.dialRefused {
			cuts = append(cuts, fmt.Sprintf("(refused) %s %s id %s (sent %s, failed %s after SIGTERM, reused conn %v, retried %v, status %d): %s",
				q.kind, q.op, q.id, q.start.Sub(triggered).Round(time.Millisecond), q.end.Sub(triggered).Round(time.Millisecond),
				q.reused, q.retried, q.status, q.failure))
		}
		if q.outcome == outBug {
			why := "accepted, then failed before the drain deadline without being counted"
			if spansCrash && !q.answered {
				why = "in flight at the app's crash and given an empty reply instead of a 502"
			}
			crash := "no crash"
			if !crashAt.IsZero() {
				crash = fmt.Sprintf("app crash %s after SIGTERM", crashAt.Sub(triggered).Round(time.Millisecond))
			}
			bugs = append(bugs, fmt.Sprintf("%s %s id %s (sent %s, failed %s after SIGTERM, %s; reused conn %v, retried %v, seen by tidegate or app %v): %s: %s; tidegate's log: %s",
				q.kind, q.op, q.id, q.start.Sub(triggered).Round(time.Millisecond), q.end.Sub(triggered).Round(time.Millisecond), crash,
				q.reused, q.retried, known, why, q.failure, strings.Join(access[q.id], " | ")))
		}
		counts[q.kind][q.outcome]++
	}
	reportedCut := int64(rep["cut"].(float64))

	for k, m := range counts {
		for o, n := range m {
			tot.byKind[k][o] += n
		}
	}
	tot.cycles++
	tot.reportedCut += reportedCut
	tot.observedCut += observedCut
	tot.acceptedCut += accepted
	if !crashAt.IsZero() {
		tot.crashes++
	}
	if rep["result"] == "timeout" {
		tot.timeouts++
	}
	if d, err := time.ParseDuration(fmt.Sprint(rep["duration"])); err == nil {
		tot.durations = append(tot.durations, d)
	} else if f, ok := rep["duration"].(float64); ok {
		tot.durations = append(tot.durations, time.Duration(f*float64(time.Second)))
	}
	t.Logf("requests: %v; cut: %d in the report, %d seen by clients (%d of them known accepted), %d answered whole just before the deadline",
		counts, reportedCut, observedCut, accepted, okNear)

	for _, b := range bugs {
		t.Errorf("BUG: %s", b)
	}
	tot.bugs = append(tot.bugs, bugs...)
	// Every cut request tidegate accepted is in the report...
	if int64(accepted) > reportedCut {
		t.Errorf("clients saw %d accepted requests cut at the deadline (%s after SIGTERM), the drain report counts %d:\n%s",
			accepted, cy.p.timeout, reportedCut, strings.Join(cuts, "\n"))
	}
	// ...and the report counts no cut that no client saw, except requests
	// whose answer had just arrived whole: tidegate counts a request done
	// after its last byte went out (a WebSocket once both sides closed), so
	// one that ends at the deadline may be counted cut though its client
	// has it all.
	if reportedCut > int64(afterDeadline+okNear) {
		for _, q := range cy.reqs {
			if q.start.Before(deadline) && q.end.After(deadline.Add(-time.Second)) {
				t.Logf("around the deadline: %s %s id %s: sent %s, ended %s after SIGTERM, %s, status %d: %s",
					q.kind, q.op, q.id, q.start.Sub(triggered).Round(time.Millisecond), q.end.Sub(triggered).Round(time.Millisecond),
					q.outcome, q.status, q.failure)
			}
		}
		t.Errorf("the drain report counts %d cut requests, clients saw only %d requests fail at the deadline (%s after SIGTERM) and %d end in the %s before it:\n%s",
			reportedCut, afterDeadline, cy.p.timeout, okNear, chaosNearDeadline, strings.Join(cuts, "\n"))
	}
	for _, q := range cy.reqs {
		if q.outcome == outAppFailed && q.status == 0 && !q.answered {
			t.Errorf("%s %s id %s: failed at an app crash without an answer: %s", q.kind, q.op, q.id, q.failure)
		}
	}
	if len(cy.reqs) == 0 {
		t.Error("the load sent nothing")
	}
}

// accessLog returns, by request id, what tidegate logged about each
// request: its access-log line and any "upstream request failed" line.
func (cy *chaosCycle) accessLog(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	note := func(m map[string]any) {
		id, _ := m["request_id"].(string)
		if id == "" {
			return
		}
		line := fmt.Sprintf("%v: status %v", m["msg"], m["status"])
		if r, ok := m["reason"]; ok {
			line += fmt.Sprintf(" reason %v", r)
		}
		if e, ok := m["error"]; ok {
			line += fmt.Sprintf(" error %v", e)
		}
		out[id] = append(out[id], line)
	}
	if b, err := os.ReadFile(cy.access); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if m, ok := parseJSONLine(l); ok {
				note(m)
			}
		}
	}
	for _, m := range cy.tg.stdout.jsonLines() {
		note(m)
	}
	return out
}

// seenIDs returns the request ids that reached tidegate's access log or
// the app: requests tidegate accepted.
func (cy *chaosCycle) seenIDs(t *testing.T) map[string]struct{} {
	t.Helper()
	ids := map[string]struct{}{}
	if b, err := os.ReadFile(cy.access); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if m, ok := parseJSONLine(l); ok {
				if id, _ := m["request_id"].(string); id != "" {
					ids[id] = struct{}{}
				}
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read the access log: %v", err)
	}
	for _, e := range readEventsRID(t, cy.record) {
		if e != "" {
			ids[e] = struct{}{}
		}
	}
	return ids
}

// readEventsRID returns the request ids of the app's record file.
func readEventsRID(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("read the app's record: %v", err)
	}
	var ids []string
	for _, l := range strings.Split(string(b), "\n") {
		if m, ok := parseJSONLine(l); ok {
			if id, _ := m["rid"].(string); id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids
}
