package fakeapp

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// reportBuffer is the capacity of each report channel: enough for the few
// events a test waits for, small enough that it is never a queue.
const reportBuffer = 16

// App is the controllable app. Create it with New; it is safe for concurrent
// use. Its zero value is not usable.
type App struct {
	mux *http.ServeMux

	steps   chan struct{} // Step hands one token to a handler waiting in waitStep
	closing chan struct{} // closed by Close: every waiting handler returns
	once    sync.Once

	bodyStarted  chan int64
	slowStarted  chan time.Duration
	hangStarted  chan struct{}
	hangCanceled chan struct{}

	conns atomic.Int64 // TCP (or unix) connections accepted, counted by ConnState
	open  atomic.Int64 // of which not yet closed

	mu       sync.Mutex
	requests map[string]int64 // path → requests that reached a handler
}

// New returns an App that serves nothing until it is given to a server; see
// Start and StartUnix.
func New() *App {
	a := &App{
		mux:          http.NewServeMux(),
		steps:        make(chan struct{}),
		closing:      make(chan struct{}),
		bodyStarted:  make(chan int64, reportBuffer),
		slowStarted:  make(chan time.Duration, reportBuffer),
		hangStarted:  make(chan struct{}, reportBuffer),
		hangCanceled: make(chan struct{}, reportBuffer),
		requests:     make(map[string]int64),
	}
	a.mux.HandleFunc("/echo", a.echo)
	a.mux.HandleFunc("/upload", a.upload)
	a.mux.HandleFunc("/download", a.download)
	a.mux.HandleFunc("/chunks", a.chunks)
	a.mux.HandleFunc("/sse", a.sse)
	a.mux.HandleFunc("/slow", a.slow)
	a.mux.HandleFunc("/hang", a.hang)
	a.mux.HandleFunc("/status", a.status)
	a.mux.HandleFunc("/trailers", a.trailers)
	a.mux.HandleFunc("/expect", a.expect)
	return a
}

// ServeHTTP counts the request under its path and serves it.
func (a *App) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.requests[r.URL.Path]++
	a.mu.Unlock()
	a.mux.ServeHTTP(w, r)
}

// Requests returns how many requests for path reached the app.
func (a *App) Requests(path string) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests[path]
}

// TotalRequests returns how many requests of any path reached the app.
func (a *App) TotalRequests() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for _, c := range a.requests {
		n += c
	}
	return n
}

// ConnsAccepted returns how many connections the app's server accepted (see
// Start: it counts them with http.Server.ConnState).
func (a *App) ConnsAccepted() int64 { return a.conns.Load() }

// ConnsOpen returns how many of the accepted connections are still open.
func (a *App) ConnsOpen() int64 { return a.open.Load() }

// BodyStarted reports, for each /upload request, the number of body bytes
// of its first successful read: the moment the body began to arrive.
func (a *App) BodyStarted() <-chan int64 { return a.bodyStarted }

// SlowStarted reports the delay of each /slow request as it starts waiting.
func (a *App) SlowStarted() <-chan time.Duration { return a.slowStarted }

// HangStarted reports each /hang request as it starts hanging.
func (a *App) HangStarted() <-chan struct{} { return a.hangStarted }

// HangCanceled reports each /hang request whose context was cancelled.
func (a *App) HangCanceled() <-chan struct{} { return a.hangCanceled }

// Step lets one handler paused between chunks or events (/chunks,
// /sse?interval=step) go on. It returns once a handler has taken the step, or
// with ctx's error.
func (a *App) Step(ctx context.Context) error {
	select {
	case a.steps <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close makes every handler that waits (for a step, a timer, or forever)
// return at once. It does not close any server; Start's cleanup does both.
func (a *App) Close() { a.once.Do(func() { close(a.closing) }) }

func report[T any](ch chan T, v T) {
	select {
	case ch <- v:
	default:
	}
}

// errClosed is returned by waits cut short by Close.
var errClosed = errors.New("fakeapp: closed")

// waitStep waits for Step, the request's end, or Close.
func (a *App) waitStep(ctx context.Context) error {
	select {
	case <-a.steps:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-a.closing:
		return errClosed
	}
}

// wait waits for d, the request's end, or Close.
func (a *App) wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-a.closing:
		return errClosed
	}
}

// Echo is the JSON /echo answers: the request as the app saw it.
type Echo struct {
	Method           string      `json:"method"`
	Host             string      `json:"host"`
	Path             string      `json:"path"`
	RawQuery         string      `json:"raw_query"`
	Proto            string      `json:"proto"`
	RemoteAddr       string      `json:"remote_addr"`
	Header           http.Header `json:"header"`
	ContentLength    int64       `json:"content_length"`
	TransferEncoding []string    `json:"transfer_encoding"`
	BodyBytes        int64       `json:"body_bytes"`
	BodySHA256       string      `json:"body_sha256"`
}

func (a *App) echo(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, Echo{
		Method:           r.Method,
		Host:             r.Host,
		Path:             r.URL.Path,
		RawQuery:         r.URL.RawQuery,
		Proto:            r.Proto,
		RemoteAddr:       r.RemoteAddr,
		Header:           r.Header,
		ContentLength:    r.ContentLength,
		TransferEncoding: r.TransferEncoding,
		BodyBytes:        n,
		BodySHA256:       hex.EncodeToString(h.Sum(nil)),
	})
}

// Upload is the JSON /upload answers.
type Upload struct {
	Bytes            int64    `json:"bytes"`
	SHA256           string   `json:"sha256"`
	ContentLength    int64    `json:"content_length"`
	TransferEncoding []string `json:"transfer_encoding"`
}

func (a *App) upload(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			if total == 0 {
				report(a.bodyStarted, int64(n))
			}
			total += int64(n)
			h.Write(buf[:n])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	writeJSON(w, Upload{
		Bytes:            total,
		SHA256:           hex.EncodeToString(h.Sum(nil)),
		ContentLength:    r.ContentLength,
		TransferEncoding: r.TransferEncoding,
	})
}

func (a *App) download(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, err := strconv.ParseInt(q.Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "n: want a byte count", http.StatusBadRequest)
		return
	}
	seed := uint64(1)
	if s := q.Get("seed"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			http.Error(w, "seed: want a number", http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if q.Get("chunked") != "1" {
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	}
	_, _ = io.Copy(w, Pattern(seed, n))
}

func (a *App) chunks(w http.ResponseWriter, r *http.Request) {
	n, size := intParam(r, "n", 3), intParam(r, "size", 1000)
	if n <= 0 || size <= 0 {
		http.Error(w, "n and size must be positive", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	rc := http.NewResponseController(w)
	for i := 0; i < n; i++ {
		if i > 0 {
			if err := a.waitStep(r.Context()); err != nil {
				return
			}
		}
		chunk := strings.Repeat(string(rune('a'+i%26)), size-1) + "\n"
		if _, err := io.WriteString(w, chunk); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

func (a *App) sse(w http.ResponseWriter, r *http.Request) {
	n := intParam(r, "n", 3)
	interval := r.URL.Query().Get("interval")
	var d time.Duration
	if interval != "step" {
		var err error
		if d, err = time.ParseDuration(interval); err != nil {
			http.Error(w, "interval: want a duration or step", http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	for i := 1; i <= n; i++ {
		if i > 1 {
			var err error
			if interval == "step" {
				err = a.waitStep(r.Context())
			} else {
				err = a.wait(r.Context(), d)
			}
			if err != nil {
				return
			}
		}
		if _, err := fmt.Fprintf(w, "id: %d\nevent: tick\ndata: event %d\n\n", i, i); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

func (a *App) slow(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.URL.Query().Get("d"))
	if err != nil {
		http.Error(w, "d: want a duration", http.StatusBadRequest)
		return
	}
	report(a.slowStarted, d)
	if err := a.wait(r.Context(), d); err != nil {
		return
	}
	fmt.Fprintf(w, "slept %s\n", d)
}

func (a *App) hang(w http.ResponseWriter, r *http.Request) {
	report(a.hangStarted, struct{}{})
	select {
	case <-r.Context().Done():
		report(a.hangCanceled, struct{}{})
	case <-a.closing:
	}
}

func (a *App) status(w http.ResponseWriter, r *http.Request) {
	code := intParam(r, "code", http.StatusOK)
	if code < 200 || code > 999 {
		http.Error(w, "code: want 200 to 999", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(code)
	fmt.Fprintf(w, "status %d\n", code)
}

// TrailerChunks is how many chunks /trailers writes before its trailers.
const TrailerChunks = 3

func (a *App) trailers(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Trailer", "X-Body-Sha256, X-Chunks")
	w.Header().Set("Content-Type", "text/plain")
	h := sha256.New()
	rc := http.NewResponseController(w)
	for i := 0; i < TrailerChunks; i++ {
		chunk := fmt.Sprintf("chunk %d\n", i)
		h.Write([]byte(chunk))
		if _, err := io.WriteString(w, chunk); err != nil {
			return
		}
		_ = rc.Flush()
	}
	w.Header().Set("X-Body-Sha256", hex.EncodeToString(h.Sum(nil)))
	w.Header().Set("X-Chunks", strconv.Itoa(TrailerChunks))
}

func (a *App) expect(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Reject") == "1" {
		http.Error(w, "rejected without reading the body", http.StatusExpectationFailed)
		return
	}
	if n := intParam(r, "continue_headers", 0); n > 0 {
		// Send our own 100 Continue carrying n headers, instead of the one
		// net/http sends on the first body read.
		for i := range n {
			w.Header().Set(fmt.Sprintf("X-Continue-%d", i), "x")
		}
		w.WriteHeader(http.StatusContinue)
		clear(w.Header())
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(body)
}

// intParam returns the query parameter name as an int, def when absent, or
// -1 when it is not a number.
func intParam(r *http.Request, name string, def int) int {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Pattern returns a reader of n deterministic pseudo-random bytes: the same
// seed and n always give the same bytes, in the app and in the test.
func Pattern(seed uint64, n int64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return io.LimitReader(rand.NewChaCha8(key), n)
}

// PatternSHA256 returns the hex SHA-256 of Pattern(seed, n).
func PatternSHA256(seed uint64, n int64) string {
	h := sha256.New()
	_, _ = io.Copy(h, Pattern(seed, n))
	return hex.EncodeToString(h.Sum(nil))
}
