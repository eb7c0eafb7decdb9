package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Differential fuzzing of tidegate's own HTTP/2 server (h2serve.go and the
// direct and handler paths behind it) against golang.org/x/net/http2's, as
// tidegate runs it with --net-http-only: the same client bytes (preface,
// SETTINGS, then header blocks, CONTINUATIONs, DATA and trailers built
// from the fuzzer's bytes, so that they get past the preface) go to both,
// each a real Server on 127.0.0.1 in front of its own recording HTTP/1.1
// app. Per stream the outcome must be the same (served with a status, or
// refused: RST_STREAM, GOAWAY or the connection closed), and a served
// stream must reach the app as the same request: method, target, Host,
// fields after the hop-by-hop rules, body.
//
// The intentional differences, each a narrow exception below:
//
//   - excRequestID: each server generates its own X-Request-Id; only its
//     presence is compared, unless the client sent a valid one.
//   - excFraming: how the body travels to the app (Content-Length or
//     chunked) is each path's choice; the body bytes are compared.
//   - excClientReset: a stream the client resets right after sending it
//     may be answered first or not, on either server: a race, not
//     compared.
//   - excGoAwayCode: when both end the connection with an error, the codes
//     may differ (STREAM_CLOSED or PROTOCOL_ERROR for a frame on a stream
//     already closed: RFC 9113 §5.1 and §5.1.1 each fit).
//   - excStricter: the own server refuses at the protocol level (RST_STREAM
//     PROTOCOL_ERROR, RFC 9113 §8.1.1 and §8.2) a request that x/net
//     passes on to the handler, which fails it (an answer of 400 or
//     more): a connection-specific field or a TE other than "trailers"
//     (x/net answers 400 itself), a content-length that is not one
//     decimal number, a :method that is not a token (502 from the
//     proxy). Refused either way; the own server never serves what x/net
//     refuses.
//   - excEmptyTE: "te" with an empty value: x/net lets it through, the own
//     server resets the stream (only "trailers" is allowed). Stricter.
//   - excUndeclaredTrailers: a trailer block with a field no trailer may
//     carry (connection-specific, framing, routing: RFC 9113 §8.2.2,
//     httpguts.ValidTrailerHeader) on a request that declared no Trailer:
//     x/net checks and keeps only declared trailers, dropping the rest
//     unread, and serves the request; the own server refuses the stream
//     (RST_STREAM PROTOCOL_ERROR) whether declared or not, for its
//     spliced path would pass the fields on. Stricter.
//   - excEmptyAuthority: an :authority pseudo-field with an empty value:
//     x/net reads it as none (the Host field, or no host), the own server
//     resets the stream (parseH2Request refuses every empty pseudo-field).
//     Stricter.

// diffApp is an HTTP/1.1 app that records every request by its
// x-diff-tag field.
type diffApp struct {
	srv *httptest.Server
	mu  sync.Mutex
	got map[string]*diffSeen
}

// diffSeen is a request as the app saw it.
type diffSeen struct {
	method, uri, host, proto string
	header                   http.Header
	body                     []byte
	bodyErr                  error
}

func newDiffApp(tb testing.TB) *diffApp {
	a := &diffApp{got: map[string]*diffSeen{}}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		s := &diffSeen{method: r.Method, uri: r.RequestURI, host: r.Host, proto: r.Proto, header: r.Header.Clone(), body: body, bodyErr: err}
		a.mu.Lock()
		a.got[r.Header.Get("X-Diff-Tag")] = s
		a.mu.Unlock()
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
	}))
	tb.Cleanup(a.srv.Close)
	return a
}

func (a *diffApp) seen(tag string) *diffSeen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.got[tag]
}

// h2DiffStream is one stream of a fuzzed exchange.
type h2DiffStream struct {
	id       uint32
	fields   []hpack.HeaderField // the header block, pseudo-fields and all
	split    int                 // cut the block into HEADERS + CONTINUATION after this many bytes; 0: one frame
	body     [][]byte            // DATA frames
	trailers []hpack.HeaderField // a trailer block, if any
	rstAfter bool                // the client resets the stream after sending it
}

// diffSrc hands out the fuzzer's bytes; zeros once they run out.
type diffSrc struct{ b []byte }

func (s *diffSrc) next() byte {
	if len(s.b) == 0 {
		return 0
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c
}

// pick returns one of table, or (for the index one past it) a string of
// the fuzzer's bytes.
func (s *diffSrc) pick(table ...string) string {
	i := int(s.next()) % (len(table) + 1)
	if i < len(table) {
		return table[i]
	}
	n := int(s.next()) % 24
	n = min(n, len(s.b))
	v := string(s.b[:n])
	s.b = s.b[n:]
	return v
}

// buildH2Diff turns the fuzzer's bytes into up to three streams.
func buildH2Diff(b []byte) []h2DiffStream {
	s := &diffSrc{b: b}
	n := 1 + int(s.next())%3
	var streams []h2DiffStream
	for i := range n {
		st := h2DiffStream{id: uint32(2*i + 1)}
		flags := s.next()
		if flags&0x80 != 0 && i > 0 {
			st.id = uint32(2 * i) // an even (server) stream id
		}
		method := s.pick("GET", "POST", "HEAD", "PUT", "OPTIONS", "CONNECT", "", "get", "G T")
		path := s.pick("/", "/a?b=c", "", "*", "/x%zz", "http://a/b", "/a b", "/%2e%2e/x", "/a#f")
		authority := s.pick("a.test", "", "a.test:80", "[::1]:1", "b c", "a.test\x00", "a@b")
		scheme := s.pick("http", "https", "", "ftp")
		pseudo := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":scheme", Value: scheme}, {Name: ":authority", Value: authority}, {Name: ":path", Value: path}}
		var kept []hpack.HeaderField
		for j, p := range pseudo {
			if flags&(1<<j) == 0 || p.Value != "" { // bit j with an empty value: the field is left out
				kept = append(kept, p)
			}
		}
		nf := int(s.next()) % 6
		var regular []hpack.HeaderField
		for range nf {
			name := s.pick("x-a", "cookie", "host", "te", "connection", "content-length", "user-agent",
				"x-request-id", "X-Upper", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection",
				"expect", "x-forwarded-for", ":path", ":foo", "trailer", "x-b")
			value := s.pick("1", "", "a=1", "trailers", "close", "chunked", "0", "5", " v ", "a\r\nb: c", "a\x00b", "100-continue", "\xff")
			regular = append(regular, hpack.HeaderField{Name: name, Value: value})
		}
		regular = append(regular, hpack.HeaderField{Name: "x-diff-tag", Value: strconv.Itoa(int(st.id))})
		st.fields = append(kept, regular...)
		if flags&0x10 != 0 {
			st.split = 1 + int(s.next())%16
		}
		nb := int(s.next()) % 3
		for range nb {
			l := int(s.next()) % 40
			chunk := bytes.Repeat([]byte{'a' + byte(len(st.body))}, l)
			st.body = append(st.body, chunk)
		}
		if flags&0x20 != 0 {
			st.trailers = []hpack.HeaderField{{Name: s.pick("x-t", "content-length", ":path", "connection"), Value: s.pick("v", "")}}
		}
		st.rstAfter = flags&0x40 != 0 && s.next()%4 == 0
		streams = append(streams, st)
	}
	return streams
}

// h2Outcome is what became of a stream: served with a status, or refused.
type h2Outcome struct {
	status int    // 0: not served
	how    string // how it was refused, for the failure message
	body   []byte
	fin    bool // the stream ended
}

// runH2Diff sends the streams to addr on a new connection and returns
// each stream's outcome, within a bound of 5s.
func runH2Diff(addr string, streams []h2DiffStream) (map[uint32]*h2Outcome, http2.ErrCode, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	defer nc.Close()
	if err := nc.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, 0, err
	}
	var connErr http2.ErrCode // a GOAWAY's error code
	var wbuf bytes.Buffer
	fr := http2.NewFramer(&wbuf, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	wbuf.WriteString(http2.ClientPreface)
	_ = fr.WriteSettings()
	out := map[uint32]*h2Outcome{}
	for _, st := range streams {
		out[st.id] = &h2Outcome{}
		hbuf.Reset()
		for _, f := range st.fields {
			_ = enc.WriteField(f)
		}
		block := hbuf.Bytes()
		endOnHeaders := len(st.body) == 0 && st.trailers == nil
		first := block
		if st.split > 0 && st.split < len(block) {
			first = block[:st.split]
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: first, EndStream: endOnHeaders, EndHeaders: len(first) == len(block)})
		if len(first) < len(block) {
			_ = fr.WriteContinuation(st.id, true, block[len(first):])
		}
		for i, d := range st.body {
			_ = fr.WriteData(st.id, i == len(st.body)-1 && st.trailers == nil, d)
		}
		if st.trailers != nil {
			hbuf.Reset()
			for _, f := range st.trailers {
				_ = enc.WriteField(f)
			}
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: hbuf.Bytes(), EndStream: true, EndHeaders: true})
		}
		if st.rstAfter {
			_ = fr.WriteRSTStream(st.id, http2.ErrCodeCancel)
		}
	}
	if _, err := nc.Write(wbuf.Bytes()); err != nil {
		return out, 0, fmt.Errorf("writing the request: %w", err)
	}
	wbuf.Reset()
	pending := len(streams)
	for _, st := range streams {
		if st.rstAfter { // the server owes it nothing more (excClientReset)
			out[st.id].fin, out[st.id].how = true, "reset by the client"
			pending--
		}
	}
	// finish ends a stream's outcome: served (status from its final
	// headers) or, with how, refused.
	finish := func(id uint32, how string) {
		o := out[id]
		if o == nil || o.fin {
			return
		}
		if how != "" {
			o.status, o.how = 0, how
		}
		o.fin = true
		pending--
	}
	for pending > 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			for id := range out {
				finish(id, "connection closed: "+err.Error())
			}
			break
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if o := out[f.StreamID]; o != nil && !o.fin && o.status == 0 {
				if st, _ := strconv.Atoi(f.PseudoValue("status")); st >= 200 {
					o.status = st
				}
			}
			if f.StreamEnded() {
				finish(f.StreamID, "")
			}
		case *http2.DataFrame:
			if o := out[f.StreamID]; o != nil && !o.fin {
				o.body = append(o.body, f.Data()...)
			}
			if f.StreamEnded() {
				finish(f.StreamID, "")
			}
		case *http2.RSTStreamFrame:
			finish(f.StreamID, "RST_STREAM "+f.ErrCode.String())
		case *http2.GoAwayFrame:
			// Streams up to LastStreamID may still be answered, or cut
			// when the connection closes after an error.
			connErr = f.ErrCode
			for id := range out {
				if id > f.LastStreamID {
					finish(id, "GOAWAY "+f.ErrCode.String())
				}
			}
		}
		if wbuf.Len() > 0 {
			_, _ = nc.Write(wbuf.Bytes())
			wbuf.Reset()
		}
	}
	return out, connErr, nil
}

// FuzzH2ServerDiff: the same client bytes to tidegate's own HTTP/2 server
// and to x/net's, each in front of a recording app.
func FuzzH2ServerDiff(f *testing.F) {
	for _, s := range [][]byte{
		{0, 0, 0, 0, 0, 0, 0, 0, 0},                   // GET / http a.test
		{1, 0, 1, 0, 0, 0, 2, 0, 0, 2, 1, 2, 30, 5},   // POST with a body
		{0, 0x10, 0, 1, 0, 0, 3, 1, 2, 3, 4, 6, 7, 0}, // cookies, split block
		{2, 0x20, 1, 0, 0, 0, 1, 5, 7, 1, 10, 0x80, 0, 0, 0, 0, 0, 0, 0},
		{0, 0x01, 6, 0, 0, 4},                         // CONNECT
		{0, 0, 0, 0, 0, 0, 3, 4, 4, 10, 5, 19, 3},     // connection-specific fields
		{0, 0, 0, 0, 0, 0, 2, 5, 7, 5, 8, 1, 1, 1},    // content-length against the body
		{0, 0, 0, 2, 0, 0, 1, 18, 1},                  // a pseudo-field among the regular ones
		{1, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, // reset by the client
		{0, 0, 0, 4, 0, 0, 0, 0},                      // an absolute-form :path
	} {
		f.Add(s)
	}
	ownApp, refApp := newDiffApp(f), newDiffApp(f)
	own, _ := startPlainProxy(f, ownApp.srv.Listener.Addr().String(), true)
	ref, _ := startPlainProxy(f, refApp.srv.Listener.Addr().String(), false)
	iter := 0
	f.Fuzz(func(t *testing.T, b []byte) {
		iter++
		streams := buildH2Diff(b)
		for i := range streams {
			for j := range streams[i].fields {
				if streams[i].fields[j].Name == "x-diff-tag" {
					streams[i].fields[j].Value = fmt.Sprintf("%d.%d", iter, streams[i].id)
				}
			}
		}
		var wg sync.WaitGroup
		var ownOut, refOut map[uint32]*h2Outcome
		var ownGoAway, refGoAway http2.ErrCode
		var ownErr, refErr error
		wg.Go(func() { ownOut, ownGoAway, ownErr = runH2Diff(own, streams) })
		wg.Go(func() { refOut, refGoAway, refErr = runH2Diff(ref, streams) })
		wg.Wait()
		if err := errors.Join(ownErr, refErr); err != nil {
			t.Fatal(err)
		}
		if refGoAway != http2.ErrCodeNo && ownGoAway == http2.ErrCodeNo && framesAfterRefusal(streams, ownOut) {
			// excXNetFramesAfterRST: x/net ignores the frames of a stream
			// it reset only until its RST_STREAM is written; DATA or
			// trailers that come later end its connection. A race in
			// x/net, seen under -race and while fuzzing.
			return
		}
		if ownGoAway != refGoAway && (ownGoAway == http2.ErrCodeNo || refGoAway == http2.ErrCodeNo) { // excGoAwayCode
			t.Fatalf("%+v: the own server's GOAWAY says %v; x/net's %v", streams, ownGoAway, refGoAway)
		}
		if ownGoAway != http2.ErrCodeNo {
			// A connection error: which streams were answered before the
			// close is a race on both sides; the error is the outcome.
			return
		}
		for _, st := range streams {
			o, r := ownOut[st.id], refOut[st.id]
			if st.rstAfter {
				continue // excClientReset
			}
			if o.status != r.status && h2Exception(st, o, r) == "" {
				t.Fatalf("stream %d %q: own server: %d %s; x/net: %d %s", st.id, st.fields, o.status, o.how, r.status, r.how)
			}
			if o.status == 0 || r.status == 0 {
				continue
			}
			if !bytes.Equal(o.body, r.body) && o.status/100 == 2 {
				t.Fatalf("stream %d %q: own server's answer %q; x/net's %q", st.id, st.fields, o.body, r.body)
			}
			tag := fmt.Sprintf("%d.%d", iter, st.id)
			og, rg := ownApp.seen(tag), refApp.seen(tag)
			if (og == nil) != (rg == nil) {
				t.Fatalf("stream %d %q: the app saw %+v from the own server; %+v from x/net", st.id, st.fields, og, rg)
			}
			if og != nil {
				compareSeen(t, st, og, rg)
			}
		}
	})
}

// compareSeen checks that the app saw the same request from both.
func compareSeen(t *testing.T, st h2DiffStream, own, ref *diffSeen) {
	t.Helper()
	if own.method != ref.method || own.uri != ref.uri || own.host != ref.host || own.proto != ref.proto {
		t.Fatalf("stream %d %q: the app saw %s %s %s Host %q from the own server; %s %s %s Host %q from x/net", st.id, st.fields,
			own.method, own.uri, own.proto, own.host, ref.method, ref.uri, ref.proto, ref.host)
	}
	if !bytes.Equal(own.body, ref.body) || (own.bodyErr == nil) != (ref.bodyErr == nil) {
		t.Fatalf("stream %d %q: the app read the body %q (%v) from the own server; %q (%v) from x/net", st.id, st.fields,
			own.body, own.bodyErr, ref.body, ref.bodyErr)
	}
	oh, rh := own.header.Clone(), ref.header.Clone()
	// excRequestID: generated ids differ.
	if len(oh["X-Request-Id"]) == 1 && len(rh["X-Request-Id"]) == 1 && !validRequestID(clientField(st, "x-request-id")) {
		delete(oh, "X-Request-Id")
		delete(rh, "X-Request-Id")
	}
	// excFraming: Content-Length or chunked to the app.
	for _, h := range []http.Header{oh, rh} {
		delete(h, "Content-Length")
		delete(h, "Transfer-Encoding")
	}
	if !maps.EqualFunc(oh, rh, slices.Equal) {
		t.Fatalf("stream %d %q: the app saw fields\n%q from the own server;\n%q from x/net", st.id, st.fields, oh, rh)
	}
}

// clientField returns the value of the first field name of st's block.
func clientField(st h2DiffStream, name string) string {
	for _, f := range st.fields {
		if strings.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// h2Exception names the documented exception that explains why the own
// server and x/net ended a stream differently, or "" if none does.
func h2Exception(st h2DiffStream, own, ref *h2Outcome) string {
	if own.status != 0 {
		return "" // the own server never serves what x/net refuses
	}
	if ref.status >= 400 {
		return "excStricter"
	}
	if clientField(st, "trailer") == "" && !validTrailers(st.trailers) {
		return "excUndeclaredTrailers"
	}
	for _, f := range st.fields {
		if f.Name == "te" && f.Value == "" {
			return "excEmptyTE"
		}
		if f.Name == ":authority" && f.Value == "" {
			return "excEmptyAuthority"
		}
	}
	return ""
}

// framesAfterRefusal reports whether a stream the own server refused with
// RST_STREAM (or the client reset) had DATA or trailers after its header
// block (excXNetFramesAfterRST).
func framesAfterRefusal(streams []h2DiffStream, own map[uint32]*h2Outcome) bool {
	for _, st := range streams {
		o := own[st.id]
		if (st.trailers != nil || len(st.body) > 0) && (st.rstAfter || o.status == 0 && strings.HasPrefix(o.how, "RST_STREAM")) {
			return true
		}
	}
	return false
}
