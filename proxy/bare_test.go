package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Tests of --forwarded-headers off and --request-id off on every way a
// request reaches the app: tidegate adds no X-Forwarded-* and no
// X-Request-Id, to the app or to the client, and passes the client's
// through untouched, even an id it would otherwise replace.

// bareOpts turns both off.
func bareOpts(proto UpstreamProtocol) func(*Options) {
	return func(o *Options) {
		o.Protocol = proto
		o.Forwarded = ForwardedOff
		o.RequestID = RequestIDOff
	}
}

// echoForwarding answers with the four headers tidegate would set, as the
// app saw them, one "Name=v1|v2" line each.
// A CONNECT is declined with 403, so that the answer is relayed; /chunked
// is answered in chunks (a flush before the body), which tidegate's
// HTTP/1.1 reader leaves to net/http's on HTTP/2, and /large with a head
// too large for the fast path's buffer, which it leaves to net/http's on
// HTTP/1.1. It sends no Date, which tidegate must add on every path even
// when it adds no request id.
func echoForwarding(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header()["Date"] = nil // net/http's server adds none
	if r.Method == http.MethodConnect {
		w.WriteHeader(http.StatusForbidden)
	}
	if r.URL.Path == "/large" {
		w.Header().Set("X-Large", strings.Repeat("l", 20<<10))
	}
	if r.URL.Path == "/chunked" {
		http.NewResponseController(w).Flush()
	}
	for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id"} {
		_, _ = fmt.Fprintf(w, "%s=%s\n", k, strings.Join(r.Header.Values(k), "|"))
	}
}

// bareCase is what a client sends and what the app must see.
type bareCase struct {
	name   string
	fields []string // lower-case name, value, ...
	want   string   // echoForwarding's answer
}

var bareCases = []bareCase{
	{"the client's, an invalid id among them", []string{
		"x-forwarded-for", "203.0.113.9", "x-forwarded-for", "198.51.100.7",
		"x-forwarded-proto", "https", "x-forwarded-host", "edge.example", "x-request-id", "not valid"},
		"X-Forwarded-For=203.0.113.9|198.51.100.7\nX-Forwarded-Proto=https\nX-Forwarded-Host=edge.example\nX-Request-Id=not valid\n"},
	{"none", nil, "X-Forwarded-For=\nX-Forwarded-Proto=\nX-Forwarded-Host=\nX-Request-Id=\n"},
	{"a valid id", []string{"x-request-id", "client-id-7"},
		"X-Forwarded-For=\nX-Forwarded-Proto=\nX-Forwarded-Host=\nX-Request-Id=client-id-7\n"},
}

// h1Fields renders fields as HTTP/1.1 header lines.
func h1Fields(fields []string) string {
	var b strings.Builder
	for i := 0; i+1 < len(fields); i += 2 {
		b.WriteString(fields[i] + ": " + fields[i+1] + "\r\n")
	}
	return b.String()
}

func TestBareHTTP1(t *testing.T) {
	app := upstreamServer(t, echoForwarding).Listener.Addr().String()
	for _, p := range []struct {
		name    string
		head    string // request line and fields before the client's
		body    string
		netHTTP bool
		status  int
	}{
		{"fast path", "GET /e HTTP/1.1\r\nHost: front.example\r\n", "", false, http.StatusOK},
		{"fast path, chunked answer", "GET /chunked HTTP/1.1\r\nHost: front.example\r\n", "", false, http.StatusOK},
		{"fast path, large answer head", "GET /large HTTP/1.1\r\nHost: front.example\r\n", "", false, http.StatusOK},
		{"net/http", "POST /e HTTP/1.1\r\nHost: front.example\r\nTransfer-Encoding: chunked\r\n", "1\r\nx\r\n0\r\n\r\n", true, http.StatusOK},
		// The handshakes of an upgrade and a tunnel: the app declines
		// them, and its answer is relayed.
		{"upgrade", "GET /e HTTP/1.1\r\nHost: front.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", true, http.StatusOK},
		{"connect", "CONNECT backend.example:443 HTTP/1.1\r\nHost: backend.example:443\r\n", "", true, http.StatusForbidden},
	} {
		t.Run(p.name, func(t *testing.T) {
			r := newFastRig(t, app, bareOpts(UpstreamHTTP1), nil)
			for i, tc := range bareCases {
				rc := dialRaw(t, r.addr)
				resp, body := rc.do(t, p.head+h1Fields(tc.fields)+"\r\n"+p.body)
				if resp.StatusCode != p.status || body != tc.want {
					t.Errorf("%s: %s, the app saw\n%s\nwant\n%s", tc.name, resp.Status, body, tc.want)
				}
				if ids := resp.Header.Values(RequestIDHeader); len(ids) != 0 {
					t.Errorf("%s: the client got X-Request-Id %q, want none", tc.name, ids)
				}
				if resp.Header.Get("Date") == "" {
					t.Errorf("%s: no Date on the answer", tc.name)
				}
				// A valid id is still the access log's (the line comes
				// after the answer).
				waitFor(t, func() bool { return r.access.Len() == i+1 })
				want := ""
				if tc.name == "a valid id" {
					want = "client-id-7"
				}
				if got := r.access.All()[i].ContextMap()["request_id"]; got != want {
					t.Errorf("%s: access log request_id %v, want %q", tc.name, got, want)
				}
			}
			n := int64(0)
			if p.netHTTP {
				n = int64(len(bareCases))
			}
			r.expectNetHTTP(t, n)
		})
	}
}

func TestBareHTTP2(t *testing.T) {
	for _, p := range []struct {
		name    string
		proto   UpstreamProtocol
		method  string
		path    string
		netHTTP bool
	}{
		{"spliced", UpstreamH2C, http.MethodPost, "/e", false},
		{"handler", UpstreamHTTP1, http.MethodPost, "/e", true},
		{"direct", UpstreamHTTP1, http.MethodGet, "/e", false},
		{"direct, chunked answer", UpstreamHTTP1, http.MethodGet, "/chunked", false},
	} {
		t.Run(p.name, func(t *testing.T) {
			app := h2cApp(t, echoForwarding)
			if p.proto == UpstreamHTTP1 {
				app = upstreamServer(t, echoForwarding).Listener.Addr().String()
			}
			r := newFastRig(t, app, bareOpts(p.proto), nil)
			c := dialOwn(t, r.addr)
			var body []byte
			if p.method == http.MethodPost {
				body = []byte("x")
			}
			for i, tc := range bareCases {
				resp := c.do(uint32(2*i+1), p.method, p.path, body, tc.fields...)
				if resp.status != "200" || string(resp.body) != tc.want {
					t.Errorf("%s: %s, the app saw\n%s\nwant\n%s", tc.name, resp.status, resp.body, tc.want)
				}
				if ids := resp.header.Values(RequestIDHeader); len(ids) != 0 {
					t.Errorf("%s: the client got x-request-id %q, want none", tc.name, ids)
				}
				if resp.header.Get("Date") == "" {
					t.Errorf("%s: no date on the answer", tc.name)
				}
			}
			n := int64(0)
			if p.netHTTP {
				n = int64(len(bareCases))
			}
			r.expectNetHTTP(t, n)
		})
	}
}

// TestBareFailureAnswers: tidegate's own error answers carry a client's
// valid id, and no X-Request-Id at all when there is none to carry.
func TestBareFailureAnswers(t *testing.T) {
	t.Run("HTTP/1.1", func(t *testing.T) {
		r := newFastRig(t, deadUpstream(t), bareOpts(UpstreamHTTP1), nil)
		rc := dialRaw(t, r.addr)
		for _, id := range []string{"", "client-id-7"} {
			var fields []string
			if id != "" {
				fields = []string{"x-request-id", id}
			}
			resp, _ := rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\n"+h1Fields(fields)+"\r\n")
			if resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("status %s, want 502 from a dead app", resp.Status)
			}
			want := []string{id}
			if id == "" {
				want = nil
			}
			if got := resp.Header.Values(RequestIDHeader); strings.Join(got, ",") != id || len(got) != len(want) {
				t.Errorf("client id %q: the 502 has X-Request-Id %q, want %q", id, got, want)
			}
		}
	})
	for _, p := range []struct {
		name   string
		proto  UpstreamProtocol
		method string
	}{
		{"HTTP/2 spliced", UpstreamH2C, http.MethodPost},
		{"HTTP/2 direct", UpstreamHTTP1, http.MethodGet},
	} {
		t.Run(p.name, func(t *testing.T) {
			r := newFastRig(t, deadUpstream(t), bareOpts(p.proto), nil)
			c := dialOwn(t, r.addr)
			var body []byte
			if p.method == http.MethodPost {
				body = []byte("x")
			}
			for i, id := range []string{"", "client-id-7"} {
				var fields []string
				if id != "" {
					fields = []string{"x-request-id", id}
				}
				resp := c.do(uint32(2*i+1), p.method, "/", body, fields...)
				if resp.status != "502" {
					t.Fatalf("status %s, want 502 from a dead app", resp.status)
				}
				got := resp.header.Values(RequestIDHeader)
				if id == "" && len(got) != 0 || id != "" && (len(got) != 1 || got[0] != id) {
					t.Errorf("client id %q: the 502 has x-request-id %q", id, got)
				}
			}
		})
	}
}
