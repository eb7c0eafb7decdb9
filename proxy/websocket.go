package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// WebSocket sessions are proxied frame by frame rather than as opaque bytes,
// so that tidegate can end them cleanly: at the drain deadline both peers get
// a close frame with status 1001 (going away) between two frames, and only
// then is the TCP connection closed. Frames are copied, never buffered whole.

// closeGoingAway is RFC 6455's status 1001.
const closeGoingAway = 1001

// wsGrace is how long the peers have to answer tidegate's close frames before
// the connections are closed.
const wsGrace = time.Second

// isUpgrade reports whether r asks to switch protocols (other than to h2c,
// which net/http handles itself).
func isUpgrade(r *http.Request) bool {
	u := r.Header.Get("Upgrade")
	return u != "" && !strings.EqualFold(u, "h2c") && headerHasToken(r.Header, "Connection", "upgrade")
}

func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// wsSessions are the live WebSocket sessions of a Handler.
type wsSessions struct {
	mu       sync.Mutex
	sessions map[*wsSession]struct{}
}

func (ss *wsSessions) add(s *wsSession) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.sessions == nil {
		ss.sessions = map[*wsSession]struct{}{}
	}
	ss.sessions[s] = struct{}{}
}

func (ss *wsSessions) remove(s *wsSession) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.sessions, s)
}

func (ss *wsSessions) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.sessions)
}

func (ss *wsSessions) all() []*wsSession {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]*wsSession, 0, len(ss.sessions))
	for s := range ss.sessions {
		out = append(out, s)
	}
	return out
}

// wsSession is one proxied WebSocket connection, other upgraded connection,
// or CONNECT tunnel.
type wsSession struct {
	frames        bool // WebSocket: copied frame by frame, closed with 1001; else raw bytes
	tunnel        bool // CONNECT: TCP semantics, each way half-closed on its own
	client, app   io.ReadWriteCloser
	clientR, appR io.Reader     // buffered readers over client and app
	clientW, appW *lockedWriter // frames are written whole under these locks
	goingAway     sync.Once
	done          chan struct{} // closed when the session is over
}

// lockedWriter serializes whole frames onto a connection.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// serveUpgrade proxies a protocol upgrade: the handshake goes to the app as
// is; on 101 a WebSocket session is copied frame by frame until either side
// ends it or the drain cuts it with close frames 1001, and any other
// protocol is copied as bytes and closed at the cut.
func (h *Handler) serveUpgrade(w http.ResponseWriter, r *http.Request, st *reqState) {
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = "http", h.target
	out.Host = r.Host
	out.RequestURI = ""
	if h.genID {
		out.Header.Set(RequestIDHeader, st.id)
	}
	h.setForwardedHeaders(r, out)
	for _, k := range []string{"Proxy-Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding"} {
		out.Header.Del(k)
	}

	app, appBuf, resp, ok := h.handshake(w, r, st, out, func(code int) bool { return code == http.StatusSwitchingProtocols })
	if !ok {
		return
	}
	client, clientBuf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		app.Close()
		h.log.Warn("websocket: cannot take over the client connection", zap.Error(err))
		return
	}
	// The recorder saw no WriteHeader: record the 101 for metrics and logs.
	if rec, ok := w.(*recorder); ok {
		rec.status = http.StatusSwitchingProtocols
	}
	if err := resp.Write(clientBuf); err != nil || clientBuf.Flush() != nil {
		client.Close()
		app.Close()
		return
	}

	s := &wsSession{frames: isWebSocket(r), client: client, app: app,
		clientW: &lockedWriter{w: client}, appW: &lockedWriter{w: app},
		clientR: clientBuf.Reader, appR: appBuf, done: make(chan struct{})}
	proto := ProtocolUpgrade
	if s.frames {
		proto = ProtocolWebSocket
	}
	h.tracker.ConnOpened(proto)
	defer h.tracker.ConnClosed(proto)
	h.ws.add(s)
	defer h.ws.remove(s)
	s.run(h.log)
}

// handshake sends out, the first request of an upgrade or a tunnel, on a
// connection of its own to the app and reads the answer. If accept likes
// its status, the caller gets the connection, a reader over it that may
// hold the first bytes after the answer, and the answer. Otherwise the
// answer has been relayed to the client as a plain response (or the error
// answered as any upstream failure) and ok is false.
func (h *Handler) handshake(w http.ResponseWriter, r *http.Request, st *reqState, out *http.Request, accept func(int) bool) (app net.Conn, appBuf *bufio.Reader, resp *http.Response, ok bool) {
	fail := func(err error) {
		h.errorHandler(w, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)), err)
	}
	dialCtx, cancel := context.WithTimeout(r.Context(), h.dialTimeout)
	app, err := h.dial(dialCtx)
	cancel()
	if err != nil {
		fail(err)
		return nil, nil, nil, false
	}
	st.sent = h.later(st.start)
	h.addVia(out.Header, r)
	if err := out.Write(app); err != nil {
		app.Close()
		fail(err)
		return nil, nil, nil, false
	}
	appBuf = bufio.NewReader(app)
	resp, err = http.ReadResponse(appBuf, out)
	if err != nil {
		app.Close()
		fail(err)
		return nil, nil, nil, false
	}
	st.headers = h.later(st.start)
	if !accept(resp.StatusCode) {
		// The app said no: relay its answer as a plain response.
		defer app.Close()
		defer resp.Body.Close()
		copyHeaders(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		return nil, nil, nil, false
	}
	return app, appBuf, resp, true
}

func (s *wsSession) run(log *zap.Logger) {
	if s.tunnel {
		s.runTunnel(log)
		return
	}
	var wg sync.WaitGroup
	ended := make(chan struct{}, 2)
	pipe := func(dst *lockedWriter, src io.Reader, dstConn, srcConn io.ReadWriteCloser) {
		var err error
		if s.frames {
			err = copyFrames(dst, src)
		} else {
			_, err = io.Copy(dstConn, src)
		}
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			log.Debug("websocket: session ended by error", zap.Error(err))
		}
		// One direction is over: the other has the grace to finish.
		if cw, ok := dstConn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		ended <- struct{}{}
	}
	wg.Go(func() { pipe(s.appW, s.clientR, s.app, s.client) })
	wg.Go(func() { pipe(s.clientW, s.appR, s.client, s.app) })
	<-ended
	t := time.NewTimer(wsGrace)
	select {
	case <-ended:
	case <-t.C:
	}
	t.Stop()
	s.client.Close()
	s.app.Close()
	wg.Wait()
	close(s.done)
}

// goAway sends both peers a close frame 1001 between two frames, gives them
// wsGrace to answer, then closes the connections.
func (s *wsSession) goAway() {
	s.goingAway.Do(func() {
		if !s.frames { // an unknown protocol: nothing to say, just close
			s.client.Close()
			s.app.Close()
			<-s.done
			return
		}
		// A frame half copied holds its lock: the writes, and the peers'
		// answers, get wsGrace together; then the connections are closed,
		// which also frees a stuck copier.
		var wg sync.WaitGroup
		wg.Go(func() { _ = writeCloseFrame(s.clientW, false) })
		wg.Go(func() { _ = writeCloseFrame(s.appW, true) })
		t := time.NewTimer(wsGrace)
		select {
		case <-s.done:
		case <-t.C:
			s.client.Close()
			s.app.Close()
		}
		t.Stop()
		wg.Wait()
	})
}

// Upgraded returns how many upgraded connections (WebSocket, other
// upgrades, CONNECT tunnels) the handler is proxying now.
func (h *Handler) Upgraded() int { return h.ws.count() }

// CloseUpgraded ends every live upgraded session: WebSocket ones with close
// frames 1001 (going away) and up to a second for the peers to answer,
// others at once. The drain calls it at the deadline; net/http cannot see these
// connections (golang/go#17721).
func (h *Handler) CloseUpgraded() {
	var wg sync.WaitGroup
	for _, s := range h.ws.all() {
		wg.Go(s.goAway)
	}
	wg.Wait()
}

// maxFrameHeader is the longest WebSocket frame header: 2 bytes, an 8-byte
// length and a 4-byte mask key.
const maxFrameHeader = 14

// copyFrames copies frames from src to dst, each whole under dst's lock, so
// that a close frame can be written between two of them.
func copyFrames(dst *lockedWriter, src io.Reader) error {
	var hdr [maxFrameHeader]byte
	for {
		if _, err := io.ReadFull(src, hdr[:2]); err != nil {
			return err
		}
		n := 2
		length := uint64(hdr[1] & 0x7f)
		switch length {
		case 126:
			if _, err := io.ReadFull(src, hdr[2:4]); err != nil {
				return err
			}
			length, n = uint64(binary.BigEndian.Uint16(hdr[2:4])), 4
		case 127:
			if _, err := io.ReadFull(src, hdr[2:10]); err != nil {
				return err
			}
			length, n = binary.BigEndian.Uint64(hdr[2:10]), 10
		}
		if hdr[1]&0x80 != 0 { // masked
			if _, err := io.ReadFull(src, hdr[n:n+4]); err != nil {
				return err
			}
			n += 4
		}
		if length > 1<<62 {
			return fmt.Errorf("websocket: frame length %d", length)
		}
		dst.mu.Lock()
		_, err := dst.w.Write(hdr[:n])
		if err == nil {
			_, err = io.CopyN(dst.w, src, int64(length))
		}
		dst.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// writeCloseFrame writes a close frame with status 1001 and reason "going
// away"; masked is true toward the app (tidegate is its client, and client
// frames must be masked).
func writeCloseFrame(dst *lockedWriter, masked bool) error {
	payload := make([]byte, 2, 2+len("going away"))
	binary.BigEndian.PutUint16(payload, closeGoingAway)
	payload = append(payload, "going away"...)
	frame := []byte{0x88, byte(len(payload))} // FIN + close; length < 126
	if masked {
		var key [4]byte
		if _, err := rand.Read(key[:]); err != nil {
			return err
		}
		frame[1] |= 0x80
		frame = append(frame, key[:]...)
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	frame = append(frame, payload...)
	dst.mu.Lock()
	defer dst.mu.Unlock()
	_, err := dst.w.Write(frame)
	return err
}

func copyHeaders(dst, src http.Header) {
	for k, vs := range src {
		for _, v := range vs {
			dst.Add(k, v)
		}
	}
}
