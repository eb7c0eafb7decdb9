package proxy

import (
	"net"
	"net/http"
	"testing"

	"golang.org/x/net/http2"
)

// Tests that a HEAD request's failure answer on tidegate's own HTTP/2
// server is a header block that ends the stream: no DATA follows, on every
// path that writes one (spliced, direct, the handler). RFC 9110 §9.3.2: the
// answer to HEAD has no content; x/net's client calls DATA on a HEAD
// stream a protocol error.

// headAnswer sends a HEAD on stream id with fields, reads its answer and
// checks that the final header block ends the stream and nothing follows
// on the stream (a PING round trip later). It returns the answer's status
// and reason.
func headAnswer(t *testing.T, c *ownClient, id uint32, fields ...string) (status, reason string) {
	t.Helper()
	c.open(id, http.MethodHead, "/p", true, fields...)
	var ended bool
	for !ended {
		switch f := c.next().(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			if s := f.PseudoValue("status"); s != "" && s[0] != '1' {
				status, reason = s, fieldsHeader(f).Get("X-Tidegate-Reason")
				if !f.StreamEnded() {
					t.Fatalf("HEAD answered %s (%s) without END_STREAM on its header block", status, reason)
				}
				ended = true
			}
		case *http2.DataFrame:
			if f.StreamID == id {
				t.Fatalf("DATA (%d bytes) on a HEAD stream before its header block ended it", len(f.Data()))
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				t.Fatalf("HEAD stream reset: %v", f.ErrCode)
			}
		}
	}
	// Nothing more on the stream: a PING's ACK comes after anything the
	// server wrote before it.
	if err := c.fr.WritePing(false, [8]byte{'h', 'e', 'a', 'd'}); err != nil {
		t.Fatal(err)
	}
	for {
		switch f := c.next().(type) {
		case *http2.PingFrame:
			if f.IsAck() && f.Data == [8]byte{'h', 'e', 'a', 'd'} {
				return status, reason
			}
		case *http2.DataFrame:
			if f.StreamID == id {
				t.Fatalf("HEAD answered %s (%s), then DATA (%d bytes, end %v)", status, reason, len(f.Data()), f.StreamEnded())
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				t.Fatalf("HEAD answered %s (%s), then RST_STREAM %v", status, reason, f.ErrCode)
			}
		}
	}
}

// downAddr is an address on 127.0.0.1 nothing listens on.
func downAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestH2OwnHeadFailureHasNoBody: issue 20 found an h2c HEAD to an app that
// is down answered 502 and then DATA (the body of a GET's 502).
func TestH2OwnHeadFailureHasNoBody(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto UpstreamProtocol
		// loop: the request carries the tidegate's own Via entry (508).
		loop       bool
		wantStatus string
		wantReason Reason
		netHTTP    int64 // requests the server's handler serves
	}{
		{name: "direct, app down", wantStatus: "502", wantReason: ReasonConnectRefused},
		{name: "spliced, app down", proto: UpstreamH2C, wantStatus: "502", wantReason: ReasonConnectRefused},
		{name: "direct, loop", loop: true, wantStatus: "508", wantReason: ReasonLoop, netHTTP: 1},
		{name: "spliced, loop", proto: UpstreamH2C, loop: true, wantStatus: "508", wantReason: ReasonLoop, netHTTP: 1},
		{name: "handler (fast path shut), app down", wantStatus: "502", wantReason: ReasonConnectRefused, netHTTP: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var so func(*ServerOptions)
			if tc.netHTTP == 1 && !tc.loop {
				so = func(o *ServerOptions) { o.FastPathOpen = func() bool { return false } }
			}
			r := newFastRig(t, downAddr(t), func(o *Options) { o.Protocol = tc.proto }, so)
			c := dialRig(t, r)
			var fields []string
			if tc.loop {
				fields = []string{"via", "1.1 " + r.handler.ViaName()}
			}
			status, reason := headAnswer(t, c, 1, fields...)
			if status != tc.wantStatus || reason != string(tc.wantReason) {
				t.Fatalf("HEAD answered %s (%s), want %s (%s)", status, reason, tc.wantStatus, tc.wantReason)
			}
			// The connection goes on.
			status, _ = headAnswer(t, c, 3, fields...)
			if status != tc.wantStatus {
				t.Fatalf("second HEAD answered %s, want %s", status, tc.wantStatus)
			}
			r.expectNetHTTP(t, 2*tc.netHTTP)
		})
	}
}
