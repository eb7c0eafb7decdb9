package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// TestLargeBodies: a 32 MiB upload and a 32 MiB download cross tidegate
// byte for byte.
func TestLargeBodies(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)
	const size = 32 << 20

	t.Run("POST", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, tg.URL("/upload"), fakeapp.Pattern(7, size))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = size
		resp, body := do(t, c, req)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200: %s", resp.StatusCode, body)
		}
		var up fakeapp.Upload
		decodeJSON(t, body, &up)
		if up.Bytes != size || up.SHA256 != fakeapp.PatternSHA256(7, size) {
			t.Errorf("app got %d bytes with sha256 %s, want %d bytes with sha256 %s",
				up.Bytes, up.SHA256, size, fakeapp.PatternSHA256(7, size))
		}
		if up.ContentLength != size {
			t.Errorf("app saw Content-Length %d, want %d", up.ContentLength, size)
		}
	})

	t.Run("GET", func(t *testing.T) {
		resp, err := c.Get(tg.URL(fmt.Sprintf("/download?n=%d&seed=9", size)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatalf("download cut after %d bytes: %v", n, err)
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
			t.Errorf("status %d, Content-Length %d; want 200, %d", resp.StatusCode, resp.ContentLength, size)
		}
		if got, want := hex.EncodeToString(h.Sum(nil)), fakeapp.PatternSHA256(9, size); n != size || got != want {
			t.Errorf("client got %d bytes with sha256 %s, want %d bytes with sha256 %s", n, got, size, want)
		}
	})
}

// TestExpectContinue: tidegate relays the app's decision on Expect:
// 100-continue; a rejecting app never makes the client send its body.
func TestExpectContinue(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)

	t.Run("accepted", func(t *testing.T) {
		// The exchange is repeated on one keep-alive connection: a
		// duplicate 100 Continue depends on a race inside the proxy, and
		// one exchange would show it only now and then.
		const exchanges = 100
		c := dialRaw(t, tg.Listen)
		duplicates := 0
		for i := range exchanges {
			body := fmt.Sprintf("hello, continued world %d", i)
			// The app sends its own 100 Continue with many headers, as an app
			// may; tidegate must still send the client one 100, not two.
			c.send(t, "POST /expect?continue_headers=1000 HTTP/1.1\r\nHost: app.test\r\nContent-Length: "+strconv.Itoa(len(body))+
				"\r\nExpect: 100-continue\r\n\r\n")
			// Nothing of the body is sent until the 100 arrives.
			line, err := c.r.ReadString('\n')
			if err != nil {
				t.Fatalf("exchange %d: waiting for 100 Continue before sending the body: %v", i, err)
			}
			if line != "HTTP/1.1 100 Continue\r\n" {
				t.Fatalf("exchange %d: first line %q, want HTTP/1.1 100 Continue", i, line)
			}
			for {
				h, err := c.r.ReadString('\n')
				if err != nil {
					t.Fatalf("exchange %d: reading the 100 response: %v", i, err)
				}
				if h == "\r\n" {
					break
				}
			}
			c.send(t, body)
			resp, got := c.readResponse(t, http.MethodPost)
			for n := 0; resp.StatusCode == http.StatusContinue && n < 3; n++ {
				duplicates++
				resp, got = c.readResponse(t, http.MethodPost)
			}
			if resp.StatusCode != http.StatusOK || string(got) != body {
				t.Fatalf("exchange %d: after 100: status %d body %q; want 200 %q", i, resp.StatusCode, got, body)
			}
		}
		if duplicates > 0 {
			t.Errorf("%d of %d exchanges got a second 100 Continue after the body was sent, want exactly one 100 per request",
				duplicates, exchanges)
		}
	})

	t.Run("rejected", func(t *testing.T) {
		c := dialRaw(t, tg.Listen)
		c.send(t, "POST /expect HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1048576\r\nX-Reject: 1"+
			"\r\nExpect: 100-continue\r\n\r\n")
		// Without sending a single body byte, the final answer arrives.
		resp, body := c.readResponse(t, http.MethodPost)
		if resp.StatusCode != http.StatusExpectationFailed {
			t.Errorf("status %d (%s), want 417 without a 100 Continue first", resp.StatusCode, body)
		}
		if app.Requests("/expect") < 1 {
			t.Errorf("the app never saw the request: the 417 is not its answer")
		}
	})
}

// TestTrailers: trailers the app sends after the body reach the client.
func TestTrailers(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)

	resp, err := c.Get(tg.URL("/trailers"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if got := resp.Trailer.Get("X-Body-Sha256"); got != hex.EncodeToString(sum[:]) {
		t.Errorf("trailer X-Body-Sha256 %q, want %x (sha256 of the %d-byte body)", got, sum, len(body))
	}
	if got := resp.Trailer.Get("X-Chunks"); got != strconv.Itoa(fakeapp.TrailerChunks) {
		t.Errorf("trailer X-Chunks %q, want %d", got, fakeapp.TrailerChunks)
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestHeaders: hop-by-hop headers stop at tidegate, X-Forwarded-* are set,
// Host is kept, and a request id travels to the app, the client and the
// access log.
func TestHeaders(t *testing.T) {
	t.Parallel()
	// One raw request with every kind of header, as a client might send it.
	const request = "GET /echo?q=1;r=2&s=%zz HTTP/1.1\r\n" +
		"Host: shop.example:8443\r\n" +
		"Connection: keep-alive, X-Custom\r\n" +
		"X-Custom: hop secret\r\n" +
		"Keep-Alive: timeout=5\r\n" +
		"Te: trailers, deflate\r\n" +
		"Upgrade: websocket\r\n" +
		"X-Forwarded-For: 203.0.113.7\r\n" +
		"X-Forwarded-Proto: https\r\n" +
		"X-Forwarded-Host: edge.example\r\n" +
		"X-End-To-End: kept\r\n" +
		"\r\n"
	echo := func(t *testing.T, tg *tidegate) (fakeapp.Echo, *http.Response) {
		c := dialRaw(t, tg.Listen)
		c.send(t, request)
		resp, body := c.readResponse(t, http.MethodGet)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var e fakeapp.Echo
		decodeJSON(t, body, &e)
		return e, resp
	}
	hopByHop := func(t *testing.T, e fakeapp.Echo) {
		for _, h := range []string{"X-Custom", "Keep-Alive", "Upgrade"} {
			if v, ok := e.Header[h]; ok {
				t.Errorf("app got hop-by-hop header %s: %q", h, v)
			}
		}
		if v := strings.Join(e.Header.Values("Connection"), ","); strings.Contains(strings.ToLower(v), "x-custom") {
			t.Errorf("app got Connection %q naming X-Custom", v)
		}
		if v := e.Header.Values("Te"); len(v) != 1 || v[0] != "trailers" {
			t.Errorf("app got Te %q, want only trailers", v)
		}
		if e.Header.Get("X-End-To-End") != "kept" {
			t.Errorf("app lost end-to-end header X-End-To-End: %v", e.Header)
		}
		if e.Host != "shop.example:8443" {
			t.Errorf("app got Host %q, want shop.example:8443", e.Host)
		}
		// Semicolons and bad escapes are passed on as sent: the query is
		// the app's business.
		if e.RawQuery != "q=1;r=2&s=%zz" || e.Path != "/echo" {
			t.Errorf("app got path %q query %q, want /echo q=1;r=2&s=%%zz", e.Path, e.RawQuery)
		}
	}

	for _, tc := range []struct {
		name  string
		flags []string
		want  map[string]string // what the app saw
		id    bool              // whether tidegate makes and returns an id
	}{
		{"append", nil, map[string]string{
			"X-Forwarded-For": "203.0.113.7, 127.0.0.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example"}, true},
		{"replace", []string{"--forwarded-headers", "replace"}, map[string]string{
			"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "shop.example:8443"}, true},
		// Both off: the client's pass through, and nothing is added.
		{"off", []string{"--forwarded-headers", "off", "--request-id", "off"}, map[string]string{
			"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example", "X-Request-Id": ""}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			app := fakeapp.Start(t)
			tg := start(t, append([]string{"--upstream", app.Addr}, tc.flags...)...)
			e, resp := echo(t, tg)
			hopByHop(t, e)
			for h, w := range tc.want {
				if got := strings.Join(e.Header.Values(h), ", "); got != w {
					t.Errorf("app got %s %q, want %q", h, got, w)
				}
			}
			if got := resp.Header.Values("X-Request-Id"); tc.id != (len(got) == 1) || len(got) > 1 {
				t.Errorf("client got X-Request-Id %q; want one: %v", got, tc.id)
			}
		})
	}

	t.Run("request id and access log", func(t *testing.T) {
		t.Parallel()
		app := fakeapp.Start(t)
		tg := start(t, "--upstream", app.Addr, "--access-log")
		c := newClient(t)

		resp, body := get(t, c, tg.URL("/echo"))
		var e fakeapp.Echo
		decodeJSON(t, body, &e)
		id := e.Header.Get("X-Request-Id")
		if !uuidV4.MatchString(id) {
			t.Errorf("app got X-Request-Id %q, want a generated UUID v4", id)
		}
		if got := resp.Header.Get("X-Request-Id"); got != id {
			t.Errorf("client got X-Request-Id %q, app got %q: want the same", got, id)
		}
		_, body2 := get(t, c, tg.URL("/echo"))
		var e2 fakeapp.Echo
		decodeJSON(t, body2, &e2)
		if e2.Header.Get("X-Request-Id") == id {
			t.Errorf("two requests got the same generated id %q", id)
		}

		req, _ := http.NewRequest(http.MethodGet, tg.URL("/echo"), nil)
		req.Header.Set("X-Request-Id", "client-id-42")
		resp3, body3 := do(t, c, req)
		var e3 fakeapp.Echo
		decodeJSON(t, body3, &e3)
		if got := e3.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != "client-id-42" {
			t.Errorf("app got X-Request-Id %q, want the client's client-id-42 unchanged", got)
		}
		if got := resp3.Header.Get("X-Request-Id"); got != "client-id-42" {
			t.Errorf("client got X-Request-Id %q back, want client-id-42", got)
		}

		line := tg.waitLog(waitTimeout, "the access log line of request "+id, func(m map[string]any) bool {
			return m["request_id"] == id && m["msg"] == "request"
		})
		if line["method"] != "GET" || line["path"] != "/echo" {
			t.Errorf("access log method %v path %v, want GET /echo: %v", line["method"], line["path"], line)
		}
		if st, _ := line["status"].(float64); st != 200 {
			t.Errorf("access log status %v, want 200", line["status"])
		}
		if n, _ := line["bytes"].(float64); int(n) != len(body) {
			t.Errorf("access log bytes %v, want %d (what the client got)", line["bytes"], len(body))
		}
		dur, ok1 := line["duration"].(float64)
		up, ok2 := line["upstream_duration"].(float64)
		if !ok1 || !ok2 || dur <= 0 || up <= 0 || up > dur || dur > 5 {
			t.Errorf("access log duration %v upstream_duration %v: want 0 < upstream_duration <= duration, in seconds",
				line["duration"], line["upstream_duration"])
		}
		tg.waitLog(waitTimeout, "the access log line of request client-id-42", func(m map[string]any) bool {
			return m["request_id"] == "client-id-42" && m["msg"] == "request"
		})
	})
}

// TestUnixSocketUpstream: an app on a unix socket is reached with
// --upstream unix:///path.
func TestUnixSocketUpstream(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "app.sock")
	app := fakeapp.StartUnix(t, sock)
	tg := start(t, "--upstream", "unix://"+sock)
	c := newClient(t)

	resp, body := get(t, c, tg.URL("/echo"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var e fakeapp.Echo
	decodeJSON(t, body, &e)
	if e.Host != tg.Listen || e.Path != "/echo" {
		t.Errorf("app got Host %q path %q, want %q /echo", e.Host, e.Path, tg.Listen)
	}
	const size = 1 << 20
	req, _ := http.NewRequest(http.MethodPost, tg.URL("/upload"), fakeapp.Pattern(5, size))
	req.ContentLength = size
	resp, body = do(t, c, req)
	var up fakeapp.Upload
	decodeJSON(t, body, &up)
	if resp.StatusCode != http.StatusOK || up.SHA256 != fakeapp.PatternSHA256(5, size) {
		t.Errorf("upload over the socket: status %d, sha256 %s, want 200 %s", resp.StatusCode, up.SHA256, fakeapp.PatternSHA256(5, size))
	}
	if app.ConnsAccepted() < 1 {
		t.Errorf("the app's unix socket accepted no connection")
	}
}
