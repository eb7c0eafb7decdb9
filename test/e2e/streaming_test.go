package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// errTestOver ends pipes a test left open.
var errTestOver = errors.New("test over")

// TestStreamingRequestBody: the app sees the first bytes of a body while the
// client is still sending it, so tidegate does not buffer requests whole.
func TestStreamingRequestBody(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)

	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.CloseWithError(errTestOver) })
	req, err := http.NewRequest(http.MethodPost, tg.URL("/upload"), pr)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		status int
		body   []byte
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, body, err}
	}()

	first := make([]byte, 16<<10)
	rest := make([]byte, 48<<10)
	for i := range first {
		first[i] = 'f'
	}
	for i := range rest {
		rest[i] = 'r'
	}
	wrote := make(chan error, 2)
	go func() { _, err := pw.Write(first); wrote <- err }()
	if n := recv(t, app.BodyStarted(), waitTimeout, "app seeing the first body bytes before the client finished"); n <= 0 || n > int64(len(first)) {
		t.Fatalf("app's first read was %d bytes; only the first %d were sent", n, len(first))
	}
	if err := recv(t, wrote, waitTimeout, "first write"); err != nil {
		t.Fatalf("first write: %v", err)
	}
	go func() { _, err := pw.Write(rest); wrote <- err; pw.Close() }()

	a := recv(t, answered, waitTimeout, "the response")
	if a.err != nil {
		t.Fatalf("POST: %v", a.err)
	}
	var up fakeapp.Upload
	decodeJSON(t, a.body, &up)
	sum := sha256.Sum256(append(append([]byte(nil), first...), rest...))
	if a.status != http.StatusOK || up.Bytes != int64(len(first)+len(rest)) || up.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("status %d, app got %d bytes (sha256 %s); want 200, %d bytes (sha256 %x)",
			a.status, up.Bytes, up.SHA256, len(first)+len(rest), sum)
	}
}

// TestStreamingResponseBody: the client reads the app's first chunk while
// the app is still holding the response open.
func TestStreamingResponseBody(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)

	const chunks, size = 3, 1000
	resp, err := c.Get(tg.URL(fmt.Sprintf("/chunks?n=%d&size=%d", chunks, size)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, chunks)
	go func() {
		defer close(got)
		br := bufio.NewReader(resp.Body)
		for range chunks {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			got <- line
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for i := range chunks {
		if i > 0 {
			if err := app.Step(ctx); err != nil {
				t.Fatalf("app did not wait for step %d: %v", i, err)
			}
		}
		// The app writes chunk i, then blocks until the next Step: the
		// client must have it before the app goes on.
		line := recv(t, got, waitTimeout, fmt.Sprintf("chunk %d while the app holds the response", i))
		want := strings.Repeat(string(rune('a'+i)), size-1) + "\n"
		if line != want {
			t.Fatalf("chunk %d: got %d bytes %.10q…, want %d bytes %.10q…", i, len(line), line, len(want), want)
		}
	}
}

// TestChunkedUpload: a body without Content-Length arrives whole, and the
// app sees it chunked.
func TestChunkedUpload(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)

	const size = 3<<20 + 17
	// io.MultiReader hides the length: the client sends chunked.
	req, err := http.NewRequest(http.MethodPost, tg.URL("/upload"), io.MultiReader(fakeapp.Pattern(3, size)))
	if err != nil {
		t.Fatal(err)
	}
	if req.ContentLength != 0 {
		t.Fatalf("test setup: request has Content-Length %d", req.ContentLength)
	}
	resp, body := do(t, c, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var up fakeapp.Upload
	decodeJSON(t, body, &up)
	if up.Bytes != size || up.SHA256 != fakeapp.PatternSHA256(3, size) {
		t.Errorf("app got %d bytes (sha256 %s), want %d (sha256 %s)", up.Bytes, up.SHA256, size, fakeapp.PatternSHA256(3, size))
	}
	if up.ContentLength != -1 || len(up.TransferEncoding) != 1 || up.TransferEncoding[0] != "chunked" {
		t.Errorf("app saw Content-Length %d, Transfer-Encoding %q; want -1, [chunked]", up.ContentLength, up.TransferEncoding)
	}
}

// TestSSE: each server-sent event reaches the client while the app still
// holds the stream open.
func TestSSE(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)

	const events = 4
	resp, err := c.Get(tg.URL(fmt.Sprintf("/sse?n=%d&interval=step", events)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q, want text/event-stream", ct)
	}
	got := make(chan string, events)
	go func() {
		defer close(got)
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if d, ok := strings.CutPrefix(line, "data: "); ok {
				got <- strings.TrimSpace(d)
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for i := 1; i <= events; i++ {
		if i > 1 {
			if err := app.Step(ctx); err != nil {
				t.Fatalf("app did not wait before event %d: %v", i, err)
			}
		}
		sent := time.Now()
		ev := recv(t, got, waitTimeout, fmt.Sprintf("event %d while the app holds the stream", i))
		if want := fmt.Sprintf("event %d", i); ev != want {
			t.Fatalf("got %q, want %q", ev, want)
		}
		if d := time.Since(sent); d > time.Second {
			t.Errorf("event %d took %s to arrive", i, d)
		}
	}
	if _, more := <-got; more {
		t.Errorf("an event after the last one")
	}
}
