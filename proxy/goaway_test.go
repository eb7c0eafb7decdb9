package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Client is a raw HTTP/2 client: it sees every frame the server sends,
// and may misbehave the way a racing client does.
type h2Client struct {
	t      *testing.T
	c      net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	read   func() (http2.Frame, error) // where next reads; nil: fr.ReadFrame
}

func dialH2(t *testing.T, c net.Conn) *h2Client {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	hc := &h2Client{t: t, c: c, fr: http2.NewFramer(c, c)}
	hc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	hc.enc = hpack.NewEncoder(&hc.encBuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := hc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// The server's SETTINGS comes first; acknowledge it.
	f := hc.next()
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		t.Fatalf("first frame from the server is %v, want SETTINGS", f)
	}
	if err := hc.fr.WriteSettingsAck(); err != nil {
		t.Fatal(err)
	}
	return hc
}

// next reads one frame, skipping the connection-level bookkeeping that
// does not matter here (SETTINGS ACK, WINDOW_UPDATE).
func (h *h2Client) next() http2.Frame {
	h.t.Helper()
	read := h.read
	if read == nil {
		read = h.fr.ReadFrame
	}
	for {
		f, err := read()
		if err != nil {
			h.t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
		case *http2.WindowUpdateFrame:
			continue
		}
		return f
	}
}

// get opens stream id with a GET of path.
func (h *h2Client) get(id uint32, path string) {
	h.t.Helper()
	h.encBuf.Reset()
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "tidegate.test"}, {":path", path}} {
		if err := h.enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]}); err != nil {
			h.t.Fatal(err)
		}
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encBuf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
}

// response reads until stream id ends, and returns its status and every
// other frame seen meanwhile (in order).
func (h *h2Client) response(id uint32) (status string, others []http2.Frame) {
	h.t.Helper()
	for {
		f := h.next()
		if f.Header().StreamID != id {
			others = append(others, f)
			continue
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" {
				status = s
			}
			if f.StreamEnded() {
				return status, others
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				return status, others
			}
		case *http2.RSTStreamFrame:
			h.t.Fatalf("stream %d reset: %v", id, f.ErrCode)
		}
	}
}

func goAways(fs []http2.Frame) []*http2.GoAwayFrame {
	var out []*http2.GoAwayFrame
	for _, f := range fs {
		if g, ok := f.(*http2.GoAwayFrame); ok {
			out = append(out, g)
		}
	}
	return out
}

// expectFirstStep reads the first GOAWAY and its PING.
func (h *h2Client) expectFirstStep() (ping [8]byte) {
	h.t.Helper()
	f := h.next()
	g, ok := f.(*http2.GoAwayFrame)
	if !ok || g.LastStreamID != maxStreamID || g.ErrCode != http2.ErrCodeNo {
		h.t.Fatalf("after the drain began, got %v; want GOAWAY last-stream-id 2^31-1 NO_ERROR", f)
	}
	f = h.next()
	p, ok := f.(*http2.PingFrame)
	if !ok || p.IsAck() {
		h.t.Fatalf("after the first GOAWAY, got %v; want a PING", f)
	}
	return p.Data
}

// startH2Server serves app on a cleartext listener: with own, through a
// Handler in front of app on HTTP/1.1, with tidegate's own HTTP/2 server
// (ServerOptions.FastPath); else app itself is the server's handler and
// net/http serves h2c.
func startH2Server(t *testing.T, own bool, app http.Handler, o ServerOptions, adjust func(*Server)) (*Server, *Tracker) {
	t.Helper()
	if !own {
		return startServerWith(t, app, o, adjust)
	}
	h := handlerFor(t, app.ServeHTTP)
	o.FastPath = h
	s, tr := startServerWith(t, h, o, adjust)
	if !s.h2own {
		t.Fatal("NewServer left tidegate's own HTTP/2 server off")
	}
	return s, tr
}

// expectOwnH2 checks that a connection is being served by tidegate's own
// HTTP/2 server exactly when it should be.
func expectOwnH2(t *testing.T, s *Server, own bool) {
	t.Helper()
	n := len(s.ownH2Conns())
	if own && n != 1 {
		t.Fatalf("%d connections on tidegate's own HTTP/2 server, want 1", n)
	}
	if !own && n != 0 {
		t.Fatalf("%d connections on tidegate's own HTTP/2 server, want net/http to serve", n)
	}
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
}

// TestTwoStepGoAway walks RFC 9113 §6.8 frame by frame: a stream the
// client opens after the first GOAWAY (it was on the wire) is served, the
// real GOAWAY waits for the PING to come back and then names the last
// stream served, and the connection closes once it is done.
func TestTwoStepGoAway(t *testing.T) { forEachServer(t, testTwoStepGoAway) }

func testTwoStepGoAway(t *testing.T, own bool) {
	// A bound far above the test's length: only the PING's ACK can
	// release the real GOAWAY.
	s, tr := startH2Server(t, own, okHandler(), ServerOptions{}, func(s *Server) { s.goAwayBound = time.Hour })
	nc, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	h := dialH2(t, nc)
	h.get(1, "/")
	if st, others := h.response(1); st != "200" || len(goAways(others)) != 0 {
		t.Fatalf("before the drain: status %s, frames %v", st, others)
	}
	expectOwnH2(t, s, own)

	s.BeginDrain()
	ping := h.expectFirstStep()

	// Stream 3 was "in flight": the server must serve it, and must not
	// send the real GOAWAY while its PING is unanswered.
	h.get(3, "/")
	if st, others := h.response(3); st != "200" || len(goAways(others)) != 0 {
		t.Fatalf("stream opened in the race: status %s, frames %v; want 200 and no second GOAWAY", st, others)
	}

	if err := h.fr.WritePing(true, ping); err != nil {
		t.Fatal(err)
	}
	// Stream 5, after the round trip: served, and its response brings the
	// real GOAWAY, naming stream 5.
	h.get(5, "/")
	st, others := h.response(5)
	if st != "200" {
		t.Fatalf("stream 5: status %s", st)
	}
	var final *http2.GoAwayFrame
	if gs := goAways(others); len(gs) > 0 {
		final = gs[0]
	} else {
		f := h.next()
		if g, ok := f.(*http2.GoAwayFrame); ok {
			final = g
		} else {
			t.Fatalf("after the round trip, got %v; want the real GOAWAY", f)
		}
	}
	if final.LastStreamID != 5 || final.ErrCode != http2.ErrCodeNo {
		t.Fatalf("real GOAWAY: last stream %d, code %v; want 5, NO_ERROR", final.LastStreamID, final.ErrCode)
	}
	// The server closes the connection, nothing refused on the way.
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("connection ended with %v; want EOF", err)
			}
			break
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			t.Fatalf("stream %d refused: %v", rst.StreamID, rst.ErrCode)
		}
	}
	waitFor(t, func() bool { return tr.ConnectionsTotal() == 0 })
}

// TestShutdownGivesIdleH2ConnsBothSteps: a connection that saw no request
// during the drain still gets the first GOAWAY, then the real one only
// after its PING is answered or the bound passes.
func TestShutdownGivesIdleH2ConnsBothSteps(t *testing.T) {
	forEachServer(t, testShutdownGivesIdleH2ConnsBothSteps)
}

func testShutdownGivesIdleH2ConnsBothSteps(t *testing.T, own bool) {
	for _, ack := range []bool{true, false} {
		t.Run(fmt.Sprintf("ack=%v", ack), func(t *testing.T) {
			bound := time.Hour // only the ACK releases the real GOAWAY
			if !ack {
				bound = 200 * time.Millisecond
			}
			s, tr := startH2Server(t, own, okHandler(), ServerOptions{}, func(s *Server) { s.goAwayBound = bound })
			nc, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			h := dialH2(t, nc)
			h.get(1, "/")
			if st, _ := h.response(1); st != "200" {
				t.Fatalf("status %s", st)
			}
			expectOwnH2(t, s, own)

			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- s.Shutdown(ctx) }()
			ping := h.expectFirstStep()
			first := time.Now()
			if ack {
				if err := h.fr.WritePing(true, ping); err != nil {
					t.Fatal(err)
				}
			}
			f := h.next()
			g, ok := f.(*http2.GoAwayFrame)
			if !ok || g.LastStreamID != 1 || g.ErrCode != http2.ErrCodeNo {
				t.Fatalf("second frame of the shutdown: %v; want GOAWAY last-stream-id 1", f)
			}
			if gap := time.Since(first); !ack && gap < bound {
				t.Fatalf("real GOAWAY %s after the first, with the PING unanswered; want at least %s", gap, bound)
			}
			if err := <-shut; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			// The idle connection closes after its real GOAWAY.
			if f, err := h.fr.ReadFrame(); !errors.Is(err, io.EOF) {
				t.Fatalf("after the real GOAWAY: %v, %v; want EOF", f, err)
			}
			waitFor(t, func() bool { return tr.ConnectionsTotal() == 0 })
		})
	}
}

// TestTwoStepGoAwayOverTLS: the frames go in above TLS, where they are
// frames, and requests still see the TLS state.
func TestTwoStepGoAwayOverTLS(t *testing.T) {
	certFile, keyFile := writeCert(t, t.TempDir(), 1)
	cfg, err := LoadTLS(TLSOptions{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	tlsSeen := make(chan bool, 4)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tlsSeen <- r.TLS != nil
	})
	s, _ := startServerWith(t, h, ServerOptions{TLS: cfg}, func(s *Server) { s.goAwayBound = time.Hour })
	tc, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN chose %q", p)
	}
	c := dialH2(t, tc)
	c.get(1, "/")
	if st, _ := c.response(1); st != "200" {
		t.Fatalf("status %s", st)
	}
	if !<-tlsSeen {
		t.Fatal("request over h2+TLS has no r.TLS")
	}
	s.BeginDrain()
	ping := c.expectFirstStep()
	if err := c.fr.WritePing(true, ping); err != nil {
		t.Fatal(err)
	}
	c.get(3, "/")
	st, others := c.response(3)
	if st != "200" {
		t.Fatalf("status %s", st)
	}
	<-tlsSeen
	gs := goAways(others)
	if len(gs) == 0 {
		f := c.next()
		g, ok := f.(*http2.GoAwayFrame)
		if !ok {
			t.Fatalf("got %v; want the real GOAWAY", f)
		}
		gs = append(gs, g)
	}
	if gs[0].LastStreamID != 3 {
		t.Fatalf("real GOAWAY names stream %d; want 3", gs[0].LastStreamID)
	}
}

// TestH2ClientsMoveWithoutErrorsThroughTheDrain: Go's HTTP/2 client keeps
// sending through BeginDrain and Shutdown; every request succeeds, and the
// client moves to new connections.
func TestH2ClientsMoveWithoutErrorsThroughTheDrain(t *testing.T) {
	forEachServer(t, testH2ClientsMoveWithoutErrorsThroughTheDrain)
}

func testH2ClientsMoveWithoutErrorsThroughTheDrain(t *testing.T, own bool) {
	var conns atomic.Int64
	var ownSeen atomic.Bool
	s, _ := startH2Server(t, own, okHandler(), ServerOptions{}, nil)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conns.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "http://" + s.Addr().String() + "/"

	const workers, perWorker = 8, 150
	var (
		wg       sync.WaitGroup
		okCount  atomic.Int64
		errMu    sync.Mutex
		firstErr error
		started  = make(chan struct{}, workers*perWorker)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				started <- struct{}{}
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				okCount.Add(1)
				if len(s.ownH2Conns()) > 0 {
					ownSeen.Store(true)
				}
			}
		}()
	}
	// Drain a third of the way in, while every worker is busy.
	for range workers * perWorker / 3 {
		<-started
	}
	s.BeginDrain()
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("%d of %d requests failed; first: %v", workers*perWorker-int(okCount.Load()), workers*perWorker, firstErr)
	}
	if n := conns.Load(); n < 2 {
		t.Fatalf("the client used %d connection(s); the drain should have moved it to new ones", n)
	}
	if ownSeen.Load() != own {
		t.Fatalf("tidegate's own HTTP/2 server served: %v; want %v", ownSeen.Load(), own)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestFrameScannerFollowsBoundariesAcrossWrites feeds the scanner frames
// cut at every possible place.
func TestFrameScannerFollowsBoundariesAcrossWrites(t *testing.T) {
	var stream []byte
	stream = appendFrameHeader(stream, 3, 0x0, 0, 1)
	stream = append(stream, "abc"...)
	stream = appendFrameHeader(stream, 8, frameTypePing, frameFlagAck, 0)
	stream = append(stream, goAwayPingData[:]...)
	stream = appendFrameHeader(stream, 0, 0x4, 1, 0) // SETTINGS ACK, empty
	for cut := 0; cut <= len(stream); cut++ {
		var acks int
		s := frameScanner{watchPing: true, onPingAck: func(d [8]byte) {
			if d == goAwayPingData {
				acks++
			}
		}}
		s.scan(stream[:cut])
		s.scan(stream[cut:])
		if !s.atBoundary() || s.frames != 3 || acks != 1 {
			t.Fatalf("cut at %d: boundary %v, frames %d, acks %d", cut, s.atBoundary(), s.frames, acks)
		}
	}
	// The client's preface is skipped, not read as a frame.
	s := frameScanner{skip: clientPrefaceLen}
	s.scan([]byte(http2.ClientPreface))
	if s.frames != 0 || s.skip != 0 {
		t.Fatalf("after the preface: frames %d, skip %d", s.frames, s.skip)
	}
}

// handlerFor starts app as an HTTP/1.1 upstream and returns a Handler in
// front of it.
func handlerFor(t *testing.T, app http.HandlerFunc) *Handler {
	t.Helper()
	as := upstreamServer(t, app)
	up, err := ParseUpstream(as.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Options{Upstream: up, Tracker: NewTracker(TrackerOptions{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.CloseIdleConnections)
	return h
}
