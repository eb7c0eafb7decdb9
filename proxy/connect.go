package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"

	"go.uber.org/zap"
)

// CONNECT passes through to the app as it came: tidegate is a sidecar,
// not a forward proxy, so it opens the tunnel to the app (its only
// upstream) and asks the app for the authority the client named. If the
// app answers 2xx, the bytes flow both ways with TCP semantics (each way
// half-closed on its own) until both ends close; the tunnel is one request
// in flight and one "connect" connection for its whole life, and the drain
// closes it at the deadline. Any other answer is relayed as a response.

// serveConnect proxies a CONNECT request, over HTTP/1.1 or HTTP/2.
func (h *Handler) serveConnect(w http.ResponseWriter, r *http.Request, st *reqState) {
	out := &http.Request{
		Method:     http.MethodConnect,
		URL:        &url.URL{Host: r.Host},
		Host:       r.Host,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     r.Header.Clone(),
	}
	for _, k := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"} {
		out.Header.Del(k)
	}
	if h.genID {
		out.Header.Set(RequestIDHeader, st.id)
	}
	h.setForwardedHeaders(r, out)
	app, appBuf, resp, ok := h.handshake(w, r, st, out, func(code int) bool { return code/100 == 2 })
	if !ok {
		return
	}
	// RFC 9110 §9.3.6: no Content-Length or Transfer-Encoding in a 2xx
	// answer to CONNECT; what follows the header is the tunnel.
	resp.Header.Del("Content-Length")
	resp.Header.Del("Transfer-Encoding")

	s := &wsSession{tunnel: true, app: app, appR: appBuf, done: make(chan struct{})}
	if r.ProtoMajor == 1 {
		client, clientBuf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			app.Close()
			h.log.Warn("connect: cannot take over the client connection", zap.Error(err))
			return
		}
		if rec, ok := w.(*recorder); ok {
			rec.status = resp.StatusCode
		}
		fmt.Fprintf(clientBuf, "HTTP/1.1 %s\r\n", resp.Status)
		if err := resp.Header.Write(clientBuf); err != nil {
			client.Close()
			app.Close()
			return
		}
		if _, err := clientBuf.WriteString("\r\n"); err != nil || clientBuf.Flush() != nil {
			client.Close()
			app.Close()
			return
		}
		s.client, s.clientR = client, clientBuf.Reader
	} else {
		// HTTP/2 (RFC 9113 §8.5): the tunnel is the stream.
		copyHeaders(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		rc := http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			app.Close()
			return
		}
		sc := &streamConn{body: r.Body, w: w, rc: rc}
		s.client, s.clientR = sc, sc
	}

	h.tracker.ConnOpened(ProtocolConnect)
	defer h.tracker.ConnClosed(ProtocolConnect)
	h.ws.add(s)
	defer h.ws.remove(s)
	s.run(h.log)
}

// runTunnel copies both ways until both have ended: an EOF passes on as a
// half-close where the other side can take one, an error ends the session.
func (s *wsSession) runTunnel(log *zap.Logger) {
	defer close(s.done)
	var wg sync.WaitGroup
	pipe := func(dst io.ReadWriteCloser, src io.Reader, srcConn io.Closer) {
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			_ = cw.CloseWrite()
			return
		}
		if err != nil && !errors.Is(err, net.ErrClosed) {
			log.Debug("connect: tunnel ended by error", zap.Error(err))
		}
		_ = dst.Close()
		_ = srcConn.Close()
	}
	wg.Go(func() { pipe(s.app, s.clientR, s.client) })
	wg.Go(func() { pipe(s.client, s.appR, s.app) })
	wg.Wait()
	_ = s.client.Close()
	_ = s.app.Close()
}

// streamConn is the client side of an HTTP/2 CONNECT tunnel: the request
// body is what the client sends, the response body what it receives.
type streamConn struct {
	body      io.ReadCloser
	w         io.Writer
	rc        *http.ResponseController
	closeOnce sync.Once
}

func (c *streamConn) Read(p []byte) (int, error) { return c.body.Read(p) }

func (c *streamConn) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err == nil {
		err = c.rc.Flush()
	}
	return n, err
}

// Close stops the reading side; the stream itself ends when the handler
// returns.
func (c *streamConn) Close() error {
	c.closeOnce.Do(func() { _ = c.body.Close() })
	return nil
}
