package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2frames builds a raw frame stream, a test's client.
type h2frames struct {
	buf bytes.Buffer
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newH2Frames() *h2frames {
	b := &h2frames{}
	b.fr = http2.NewFramer(&b.buf, nil)
	b.fr.AllowIllegalWrites = true
	b.enc = hpack.NewEncoder(&b.hb)
	return b
}

// block encodes fields; a field whose name begins with "\x00" is written
// with that byte dropped, never indexed (the encoder takes any string).
func (b *h2frames) block(fields ...string) []byte {
	b.hb.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		name, sensitive := fields[i], false
		if strings.HasPrefix(name, "\x00") {
			name, sensitive = name[1:], true
		}
		_ = b.enc.WriteField(hpack.HeaderField{Name: name, Value: fields[i+1], Sensitive: sensitive})
	}
	return bytes.Clone(b.hb.Bytes())
}

// headers writes block as a HEADERS frame and CONTINUATIONs of at most
// split bytes (0: one frame).
func (b *h2frames) headers(stream uint32, end bool, split int, block []byte) {
	first := block
	if split > 0 && len(first) > split {
		first = block[:split]
	}
	rest := block[len(first):]
	_ = b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: first, EndStream: end, EndHeaders: len(rest) == 0})
	for len(rest) > 0 {
		n := min(len(rest), split)
		_ = b.fr.WriteContinuation(stream, n == len(rest), rest[:n])
		rest = rest[n:]
	}
}

// h2readResult is what one read gave, in a form both readers' results
// can be compared in.
type h2readResult struct {
	kind      string // frame type, or "error"
	stream    uint32
	ended     bool
	truncated bool
	fields    string
	err       string
}

func describeRead(f http2.Frame, err error) h2readResult {
	if err != nil {
		r := h2readResult{kind: "error"}
		var se http2.StreamError
		var ce http2.ConnectionError
		switch {
		case errors.As(err, &se):
			r.stream, r.err = se.StreamID, "stream "+se.Code.String()
		case errors.As(err, &ce):
			r.err = "connection " + http2.ErrCode(ce).String()
		default:
			r.err = err.Error()
		}
		return r
	}
	r := h2readResult{kind: f.Header().Type.String(), stream: f.Header().StreamID}
	if mh, ok := f.(*http2.MetaHeadersFrame); ok {
		r.ended, r.truncated = mh.StreamEnded(), mh.Truncated
		var sb strings.Builder
		for _, hf := range mh.Fields {
			fmt.Fprintf(&sb, "%q=%q/%v ", hf.Name, hf.Value, hf.Sensitive)
		}
		r.fields = sb.String()
	}
	return r
}

// readBoth reads stream with x/net's ReadMetaHeaders and with
// h2headerReader, each on its own Framer, and returns what each read,
// frame by frame, up to the first error.
func readBoth(stream []byte, maxList uint32) (want, got []h2readResult) {
	xf := http2.NewFramer(nil, bytes.NewReader(stream))
	xf.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	xf.MaxHeaderListSize = maxList
	ours := newH2HeaderReader(http2.NewFramer(nil, bytes.NewReader(stream)), maxList)
	for i := 0; i < 64; i++ {
		f, err := xf.ReadFrame()
		want = append(want, describeRead(f, err))
		g, gerr := ours.readFrame()
		got = append(got, describeRead(g, gerr))
		if err != nil || gerr != nil {
			var se http2.StreamError
			if errors.As(err, &se) && errors.As(gerr, &se) {
				continue // the connection goes on after a stream error
			}
			break
		}
	}
	return want, got
}

func TestH2HeaderReaderMatchesXNet(t *testing.T) {
	long := strings.Repeat("v", 300)
	cases := []struct {
		name  string
		max   uint32
		build func(b *h2frames)
		want  string // what the last read of ours must show
	}{
		{"request", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "accept", "*/*", "\x00cookie", "s=1"))
		}, `"cookie"="s=1"/true`},
		{"indexed the second time", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "user-agent", "u"))
			b.headers(3, false, 0, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "user-agent", "u"))
		}, `"user-agent"="u"`},
		{"continuations", 0, func(b *h2frames) {
			b.headers(1, true, 7, b.block(":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/x", "x-long", long, "x-b", "2"))
		}, `"x-b"="2"`},
		{"response and trailers", 0, func(b *h2frames) {
			b.headers(1, false, 0, b.block(":status", "200", "content-type", "text/plain"))
			_ = b.fr.WriteData(1, false, []byte("body"))
			b.headers(1, true, 0, b.block("grpc-status", "0", "trailer", "a, b"))
		}, `"grpc-status"="0"`},
		{"over the list limit: truncated", 200, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "x-a", long))
		}, "truncated"},
		{"trailer counted by what it names", 120, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":status", "200", "trailer", "a,b,c,d"))
		}, "truncated"},
		{"fragment far over the limit", 100, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", "x-a", strings.Repeat(long, 4)))
		}, "connection PROTOCOL_ERROR"},
		{"upper-case name", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "X-Up", "1"))
			b.headers(3, true, 0, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"))
		}, `":path"="/"`},
		{"value with a newline", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", "x-a", "1\r\nx: y"))
		}, "stream PROTOCOL_ERROR"},
		{"pseudo after regular", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block("x-a", "1", ":method", "GET"))
		}, "stream PROTOCOL_ERROR"},
		{"duplicate pseudo", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", ":method", "GET"))
		}, "stream PROTOCOL_ERROR"},
		{"unknown pseudo", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":bogus", "1"))
		}, "stream PROTOCOL_ERROR"},
		{"request and response pseudo", 0, func(b *h2frames) {
			b.headers(1, true, 0, b.block(":method", "GET", ":status", "200"))
		}, "stream PROTOCOL_ERROR"},
		{"invalid field then a continuation", 0, func(b *h2frames) {
			b.headers(1, true, 4, b.block("X-Up", "1", "x-b", long))
		}, "connection PROTOCOL_ERROR"},
		{"broken hpack", 0, func(b *h2frames) {
			b.headers(1, true, 0, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		}, "connection COMPRESSION_ERROR"},
		{"block cut short", 0, func(b *h2frames) {
			blk := b.block(":method", "GET", "x-a", long)
			b.headers(1, true, 0, blk[:len(blk)-5])
		}, "connection COMPRESSION_ERROR"},
		{"other frame between continuations", 0, func(b *h2frames) {
			blk := b.block(":method", "GET", "x-a", long)
			_ = b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:5]})
			_ = b.fr.WritePing(false, [8]byte{})
		}, "connection PROTOCOL_ERROR"},
		{"stream ends inside a block", 0, func(b *h2frames) {
			blk := b.block(":method", "GET", "x-a", long)
			_ = b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:5]})
		}, "err:" + io.EOF.Error()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newH2Frames()
			tc.build(b)
			want, got := readBoth(b.buf.Bytes(), tc.max)
			if fmt.Sprint(want) != fmt.Sprint(got) {
				t.Fatalf("reads differ from x/net's:\n x/net: %+v\n ours:  %+v", want, got)
			}
			last := got[len(got)-1]
			if last.kind == "error" && last.err == "EOF" && len(got) > 1 {
				last = got[len(got)-2]
			}
			if s := fmt.Sprintf("%+v", last); !strings.Contains(s, tc.want) {
				t.Fatalf("last read %s; want it to show %s", s, tc.want)
			}
		})
	}
}

// TestH2HeaderReaderReuses checks the point of the reader: a usual block
// costs no allocation but the Framer's HeadersFrame; fields a caller
// copied stay as they were; an unusually large block's slice is let go.
func TestH2HeaderReaderReuses(t *testing.T) {
	b := newH2Frames()
	req := []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "accept", "*/*", "user-agent", "u/1", "x-a", "1"}
	other := []string{":method", "GET", ":scheme", "http", ":authority", "b", ":path", "/b", "accept", "text/b", "user-agent", "b/2", "x-b", "2"}
	const n = 50
	b.headers(1, true, 0, b.block(req...))
	for i := 1; i < n+3; i++ {
		b.headers(uint32(2*i+1), true, 0, b.block(other...))
	}
	r := newH2HeaderReader(http2.NewFramer(nil, bytes.NewReader(b.buf.Bytes())), 0)
	f, err := r.readFrame()
	if err != nil {
		t.Fatal(err)
	}
	kept := parseOrFail(t, f)
	if _, err := r.readFrame(); err != nil { // the next block, in the same slice
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(n, func() {
		if _, err := r.readFrame(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("%v allocations per header block; want at most 1 (the Framer's HeadersFrame)", allocs)
	}
	var got []string
	for _, hf := range kept {
		got = append(got, hf.Name+"="+hf.Value)
	}
	if got := strings.Join(got, " "); got != "accept=*/* user-agent=u/1 x-a=1" {
		t.Errorf("fields copied from the first block became %s", got)
	}

	big := newH2Frames()
	var many []string
	for i := 0; i < 2*h2FieldsKept; i++ {
		many = append(many, fmt.Sprintf("x-%d", i), "v")
	}
	big.headers(1, true, 0, big.block(many...))
	big.headers(3, true, 0, big.block("x-small", "1"))
	r = newH2HeaderReader(http2.NewFramer(nil, bytes.NewReader(big.buf.Bytes())), 0)
	for i := range 2 {
		f, err := r.readFrame()
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && cap(f.(*http2.MetaHeadersFrame).Fields) > h2FieldsKept {
			t.Errorf("after a block of %d fields the reader keeps room for %d", 2*h2FieldsKept, cap(r.mh.Fields))
		}
	}
}

func parseOrFail(t *testing.T, f http2.Frame) []hpack.HeaderField {
	t.Helper()
	mh, ok := f.(*http2.MetaHeadersFrame)
	if !ok {
		t.Fatalf("read %T; want a header block", f)
	}
	rq, ok := parseH2Request(mh)
	if !ok {
		t.Fatal("parseH2Request refused a valid request")
	}
	return rq.fields
}

// FuzzH2HeaderReader reads any frame stream with x/net's own header-block
// reader and with h2headerReader: frame by frame, the same frames, fields,
// truncation and errors.
func FuzzH2HeaderReader(f *testing.F) {
	seed := func(max uint32, build func(b *h2frames)) {
		b := newH2Frames()
		build(b)
		f.Add(max, b.buf.Bytes())
	}
	seed(0, func(b *h2frames) {
		b.headers(1, true, 0, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "accept", "*/*"))
		b.headers(3, true, 3, b.block(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "accept", "*/*"))
	})
	seed(64, func(b *h2frames) { b.headers(1, false, 0, b.block(":status", "200", "trailer", "a,b")) })
	seed(0, func(b *h2frames) { b.headers(1, true, 0, b.block("X-Up", "1", ":path", "/")) })
	seed(0, func(b *h2frames) { b.headers(1, true, 2, []byte{0x3f, 0xe1, 0x1f, 0x82, 0x84}) })
	f.Fuzz(func(t *testing.T, max uint32, stream []byte) {
		want, got := readBoth(stream, max%(1<<16))
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Fatalf("reads differ from x/net's:\n x/net: %+v\n ours:  %+v", want, got)
		}
	})
}
