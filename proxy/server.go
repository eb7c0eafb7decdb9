package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
)

// ServerOptions hardens a public listener. The zero value of each field is
// replaced by the default named in its comment, so that a forgotten field
// never means "no timeout" (Go's net/http defaults every timeout to none).
type ServerOptions struct {
	// ReadHeaderTimeout bounds reading a request's headers (slowloris).
	// Zero means 10s.
	ReadHeaderTimeout time.Duration

	// IdleTimeout closes a client keep-alive connection idle for this long.
	// Keep it above the idle timeout of the load balancer in front so that
	// the load balancer, not tidegate, closes idle connections and never
	// sends a request on one tidegate is closing (golang/go#23829).
	// Zero means 620s, above AWS ALB (60s) and Google Cloud LB (600s).
	IdleTimeout time.Duration

	// MaxHeaderBytes caps the request line plus headers; larger requests get
	// 431. Zero means 64 KiB. (net/http reads 4 KiB beyond its own limit;
	// tidegate compensates, so this is the real bound, at least 4 KiB.)
	MaxHeaderBytes int

	// TLS, if set, serves the listener over TLS (ALPN h2 and http/1.1)
	// instead of cleartext; see LoadTLS. Nil means cleartext.
	TLS *tls.Config

	// DisableH2C turns off HTTP/2 with prior knowledge (h2c) on the
	// listener. The zero value serves HTTP/1.1 and h2c on the same port.
	DisableH2C bool

	// NewConnGrace is how long, once Shutdown has closed the listener, a
	// connection that has not sent a request yet may take to send one
	// before it is closed. net/http itself waits 5s, which holds a drain
	// hostage to load balancers that pre-open connections. Zero means 500ms.
	NewConnGrace time.Duration

	// Logger receives the server's own errors (accept failures, bad TLS
	// handshakes). Nil means no logs.
	Logger *zap.Logger

	// FastPath, when set, serves plain HTTP/1.1 requests on a cleartext
	// listener itself, straight to this Handler, without net/http (see
	// fast.go): about half the CPU per request. Any other request (a body,
	// an upgrade, h2c, a large head, ...) and the rest of its connection
	// are served by net/http and the server's handler, so FastPath must be
	// the Handler at the end of that handler's chain. Ignored with TLS or
	// when the Handler does not speak HTTP/1.1 to the app. Nil means
	// net/http serves everything.
	FastPath *Handler

	// FastPathOpen, when set, is asked before each request on the fast
	// path; false sends the request through the server's handler instead,
	// for example while a gate in that chain answers for the app. Nil
	// means always open.
	FastPathOpen func() bool

	// ConnLimit bounds the client connections open at once on the
	// listener's socket (see ConnLimit): at the limit, the server stops
	// accepting until one closes. Every server of one socket shares the
	// socket's ConnLimit. Nil means no limit.
	ConnLimit *ConnLimit

	// WriteStallTimeout bounds each write to an HTTP/1.1 client, and to
	// the client of a WebSocket, upgraded or CONNECT tunnel: a client
	// that takes no bytes for this long while tidegate has some for it is
	// cut, and the request with it (access-log reason
	// client_write_timeout, status 499). Only writes are bounded: an
	// idle connection or tunnel is not cut. See writestall.go. tidegate's
	// own HTTP/2 server bounds each of its writes by it too (h2WriteStall).
	// Zero means 60s; negative means no bound.
	WriteStallTimeout time.Duration
}

// Server serves the proxy on one listener and counts its connections.
type Server struct {
	srv      *http.Server
	ln       *trackedListener
	grace    time.Duration
	draining atomic.Bool
	busy     atomic.Int64 // connections that are new or serving a request
	tls      *tls.Config  // nil: cleartext

	h2          *http2.Server // nil: HTTP/1.1 only
	goAwayBound time.Duration // longest wait for the first GOAWAY's PING

	mu      sync.Mutex
	fresh   map[*trackedConn]time.Time // accepted, no request yet; touched once per connection
	h2conns map[h2Drainer]struct{}     // HTTP/2 connections being served

	// The fast path (fastserve.go); fast is nil without it.
	t                 *Tracker
	log               *zap.Logger
	fast              *Handler
	fastH1            bool // the fast path serves HTTP/1.1 requests (the app speaks HTTP/1.1)
	h2own             bool // h2c connections are served by tidegate's HTTP/2 server (h2serve.go)
	maxHeaderBytes    int
	fastOpen          func() bool
	handoff           *handoffListener
	readHeaderTimeout time.Duration
	idleTimeout       time.Duration
	closing           atomic.Bool   // Shutdown or Close began
	acceptStopped     atomic.Bool   // StopAccepting: the listener is closed, the connections are served on
	stopped           chan struct{} // closed by Close and Shutdown
	stopOnce          sync.Once
	fastConns         map[*trackedConn]*fastConn // touched once per connection
}

// Listen binds addr on TCP. The error names the address.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, errors.Unwrap(err))
	}
	return ln, nil
}

// NewServer returns a Server that will serve h on ln (HTTP/1.1 and, unless
// disabled, h2c), counting each client connection in t by protocol.
func NewServer(ln net.Listener, h http.Handler, t *Tracker, o ServerOptions) *Server {
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 620 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.NewConnGrace <= 0 {
		o.NewConnGrace = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.WriteStallTimeout == 0 {
		o.WriteStallTimeout = defaultWriteStall
	}
	s := &Server{
		ln:      newTrackedListener(ln, o.ConnLimit, o.Logger, o.WriteStallTimeout),
		grace:   o.NewConnGrace,
		fresh:   make(map[*trackedConn]time.Time),
		h2conns: make(map[h2Drainer]struct{}),

		goAwayBound: goAwayRTTBound,

		t:                 t,
		log:               o.Logger,
		readHeaderTimeout: o.ReadHeaderTimeout,
		idleTimeout:       o.IdleTimeout,
		stopped:           make(chan struct{}),
		fastConns:         make(map[*trackedConn]*fastConn),
	}
	s.maxHeaderBytes = o.MaxHeaderBytes
	if o.FastPath != nil && o.TLS == nil && (o.FastPath.fastOK() || (o.FastPath.splice != "" && !o.DisableH2C)) {
		s.fast = o.FastPath
		s.fastH1 = o.FastPath.fastOK()
		s.h2own = !o.DisableH2C
		s.fastOpen = o.FastPathOpen
		s.handoff = newHandoffListener(ln.Addr())
		s.ln.raw = o.FastPath.rawSyscalls
	}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 {
				to := ProtocolH2C
				if r.TLS != nil {
					to = ProtocolH2
				}
				nc, _ := r.Context().Value(connKey{}).(net.Conn)
				if c := trackedOf(nc); c != nil && c.proto.CompareAndSwap(int32(ProtocolHTTP1), int32(to)) {
					t.ConnMoved(ProtocolHTTP1, to)
				}
			}
			dw := &drainWriter{ResponseWriter: w, draining: &s.draining, h2: h2ConnOf(r)}
			var body *seenBody
			if r.ProtoMajor == 1 {
				dropH2CUpgrade(r.Header)
				dw.close = len(r.TransferEncoding) > 0
				if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
					// A copy: net/http's own r.Body must stay its type,
					// for its keep-alive decision looks at it.
					body = &seenBody{ReadCloser: r.Body}
					r = r.WithContext(r.Context())
					r.Body = body
				}
			}
			h.ServeHTTP(dw, r)
			if body != nil && !body.eof.Load() {
				nc, _ := r.Context().Value(connKey{}).(net.Conn)
				if c := trackedOf(nc); c != nil {
					c.lingerOnClose()
				}
			}
			if !dw.wrote && (dw.close || s.draining.Load()) {
				// Nothing written: net/http sends the header after we return.
				dw.moveClient()
			}
		}),
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    max(o.MaxHeaderBytes-headerSlop, 1),
		ErrorLog:          zap.NewStdLog(o.Logger),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ConnState: func(nc net.Conn, cs http.ConnState) {
			if c := trackedOf(nc); c != nil {
				s.transition(c, cs, t)
			}
		},
	}
	s.srv.Protocols = new(http.Protocols)
	s.srv.Protocols.SetHTTP1(true)
	s.srv.Protocols.SetUnencryptedHTTP2(!o.DisableH2C && o.TLS == nil)
	if o.TLS != nil {
		s.srv.Protocols.SetHTTP2(true)
		s.srv.TLSConfig = o.TLS
		s.tls = o.TLS
	}
	if s.srv.Protocols.HTTP2() || s.srv.Protocols.UnencryptedHTTP2() {
		s.configureHTTP2(o.Logger)
	}
	return s
}

// configureHTTP2 serves HTTP/2 with golang.org/x/net/http2 rather than
// net/http's bundled copy: the same code, but its ServeConn takes any
// net.Conn, so tidegate can put an h2Conn under it for the two-step GOAWAY.
// ConfigureServer also registers the server's own graceful GOAWAY with
// Shutdown.
func (s *Server) configureHTTP2(log *zap.Logger) {
	tlsConf := s.srv.TLSConfig
	// The bounds of tidegate's own HTTP/2 server (h2serve.go, h2wire.go),
	// on x/net's too (TLS, --net-http-only, h2c with the own server off),
	// each set rather than left to x/net's defaults: a client that does
	// not read is cut after h2WriteStall without a byte written, and a
	// connection holds at most the same upload windows.
	s.h2 = &http2.Server{
		MaxConcurrentStreams:         h2MaxStreams,
		MaxReadFrameSize:             h2DefaultMaxFrame,
		MaxUploadBufferPerConnection: h2ConnWindow,
		MaxUploadBufferPerStream:     h2StreamWindow,
		MaxDecoderHeaderTableSize:    4096,
		MaxEncoderHeaderTableSize:    4096,
		WriteByteTimeout:             h2WriteStall,
		// IdleTimeout and MaxHeaderBytes come from the http.Server. x/net
		// has no header timeout: serveH2 bounds the wait for a first
		// request with the read-header timeout.
	}
	if err := http2.ConfigureServer(s.srv, s.h2); err != nil {
		// Only a TLS configuration without HTTP/2's ciphers fails, and
		// LoadTLS never sets the cipher list.
		log.Error("http2 not configured; serving HTTP/1.1 only", zap.Error(err))
		s.h2 = nil
		s.srv.Protocols.SetHTTP2(false)
		s.srv.Protocols.SetUnencryptedHTTP2(false)
		s.srv.TLSNextProto = nil
		return
	}
	if tlsConf == nil {
		s.srv.TLSConfig = nil // ConfigureServer adds one; the listener is cleartext
	}
	s.srv.TLSNextProto["h2"] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		s.serveH2(hs, c, c, h, false)
	}
	s.srv.TLSNextProto["unencrypted_http2"] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		// net/http hands a cleartext connection, its preface read, inside
		// a stand-in *tls.Conn.
		u, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn })
		if !ok {
			log.Error("http2: cleartext connection handed over in an unknown form; closing it")
			go c.Close()
			return
		}
		s.serveH2(hs, u.UnencryptedNetConn(), nil, h, true)
	}
}

// trackedOf finds the trackedConn under a connection net/http hands out:
// the conn itself, or the one under a *tls.Conn.
func trackedOf(c net.Conn) *trackedConn {
	if c == nil {
		return nil
	}
	switch v := c.(type) {
	case *trackedConn:
		return v
	case *tls.Conn:
		return trackedOf(v.NetConn())
	case *h2Conn:
		return trackedOf(v.Conn)
	case h2TLSConn:
		return trackedOf(v.tc)
	case *handedConn:
		return v.trackedConn
	}
	return nil
}

// connKey finds a request's connection in its context.
type connKey struct{}

// transition accounts for one connection state change: two atomic
// operations per request, and the fresh-set lock once per connection.
func (s *Server) transition(c *trackedConn, to http.ConnState, t *Tracker) {
	var from http.ConnState
	for {
		from = http.ConnState(c.state.Load())
		if from == http.StateClosed || from == http.StateHijacked {
			return // closed stays closed: a late change (a stream of the own HTTP/2 server ending) is moot
		}
		if c.state.CompareAndSwap(int32(from), int32(to)) {
			break
		}
	}
	if to == http.StateIdle {
		c.linger.Store(false) // kept alive: the last request's body was read after all
	}
	wasBusy := from == http.StateNew || from == http.StateActive
	isBusy := to == http.StateNew || to == http.StateActive
	switch {
	case to == http.StateNew && c.handedOff.Swap(false):
		// The fast path handed c to net/http: counted already, and busy.
		return
	case to == http.StateNew:
		// from is the zero value, StateNew itself: counted below.
		t.ConnOpened(ProtocolHTTP1)
		s.busy.Add(1)
		s.mu.Lock()
		s.fresh[c] = time.Now()
		s.mu.Unlock()
		return
	case wasBusy && !isBusy:
		s.busy.Add(-1)
	case !wasBusy && isBusy:
		s.busy.Add(1)
	}
	if from == http.StateNew {
		s.mu.Lock()
		delete(s.fresh, c)
		s.mu.Unlock()
	}
	if to == http.StateHijacked || to == http.StateClosed {
		t.ConnClosed(Protocol(c.proto.Load()))
	}
}

// trackedListener hands out trackedConns and remembers being closed; Close
// may be called more than once. Each accept first takes a slot of the
// socket's ConnLimit, which the connection gives back when it closes.
type trackedListener struct {
	net.Listener
	raw    bool          // wrap accepted connections in rawSyscalls (the fast path's)
	stall  time.Duration // the accepted connections' write-stall bound; zero or less: none
	limit  *ConnLimit
	log    *zap.Logger   // the limit's warnings
	addr   string        // for the limit's warnings
	done   chan struct{} // closed by Close: ends a wait for a slot
	once   sync.Once
	closed atomic.Bool
	err    error
	// lingering counts its connections in a lingering close.
	lingering atomic.Int64
}

// newTrackedListener wraps ln; stall is the write-stall bound of the
// connections Accept hands out.
func newTrackedListener(ln net.Listener, limit *ConnLimit, log *zap.Logger, stall time.Duration) *trackedListener {
	if log == nil {
		log = zap.NewNop()
	}
	return &trackedListener{Listener: ln, limit: limit, log: log, addr: ln.Addr().String(), done: make(chan struct{}), stall: stall}
}

// accept waits for a slot of the socket's connection limit, then accepts a
// connection, which holds the slot: the caller makes sure that
// l.limit.closed() runs once when the connection closes.
func (l *trackedListener) accept() (net.Conn, error) {
	if !l.limit.acquire(l.done, l.log, l.addr) {
		return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		l.limit.release()
		if !l.closed.Load() && !errors.Is(err, net.ErrClosed) {
			l.limit.acceptFailed(err)
		}
		return nil, err
	}
	l.limit.opened()
	return c, nil
}

// Accept returns the next connection as a trackedConn, whose Close gives
// its slot back. The accepted *net.TCPConn goes to rawSyscalls unwrapped.
func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.accept()
	if err != nil {
		return nil, err
	}
	if l.raw {
		c = rawSyscalls(c)
	}
	tc := &trackedConn{Conn: c, limit: l.limit, lingering: &l.lingering}
	tc.ws.bound, tc.ws.log, tc.ws.reason = l.stall, l.log, ReasonClientWriteTimeout
	return tc, nil
}

func (l *trackedListener) Close() error {
	l.once.Do(func() {
		l.closed.Store(true)
		close(l.done)
		l.err = l.Listener.Close()
	})
	return l.err
}

// trackedConn carries its last http.ConnState, so that state changes are
// counted without a shared map. Each write to it is bounded by the
// server's write-stall bound (writeStall, writestall.go): every path's
// writes to the client go through Write, and the deadlines callers set
// through SetWriteDeadline. It passes on the optional methods net/http
// looks for on a connection: CloseWrite (a rejected request's response is
// read before the close, not reset) and ReadFrom (whose copy writes
// through Write, so no splice: nothing on the client side splices). Its
// first Close gives the connection's slot back to the socket's ConnLimit,
// whoever closes it: net/http, the fast path, tidegate's HTTP/2 server, or
// a handler that hijacked it.
type trackedConn struct {
	net.Conn
	state     atomic.Int32  // http.ConnState; 0 is StateNew
	proto     atomic.Int32  // Protocol: HTTP/1.1 until an HTTP/2 request shows otherwise
	handedOff atomic.Bool   // the fast path gave it to net/http, which has not seen it yet
	limit     *ConnLimit    // nil: no limit
	released  atomic.Bool   // the slot is given back
	linger    atomic.Bool   // the next Close lingers (lingerOnClose)
	lingering *atomic.Int64 // the listener's count of lingering closes; nil: none kept
	ws        writeStall    // each Write's deadline
}

// seenBody notes that a request's body was read to its end.
type seenBody struct {
	io.ReadCloser
	eof atomic.Bool
}

func (b *seenBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	if c.linger.CompareAndSwap(true, false) {
		if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
			if c.lingering != nil {
				c.lingering.Add(1) // before the FIN: a client that saw it sees the count
			}
			if cw.CloseWrite() == nil {
				go c.drainAndClose()
				return nil
			}
			if c.lingering != nil {
				c.lingering.Add(-1)
			}
		}
	}
	return c.closeNow()
}

// lingerOnClose makes c's next Close a lingering one: the answer has been
// written, but bytes the client sent (a request body tidegate did not
// read) may still arrive. A full close with unread bytes makes the kernel
// send a reset, which can take the answer the client has not read yet
// with it. So Close sends a FIN and returns, and drainAndClose reads and
// drops what still comes, at most lingerBytes for at most lingerTime,
// then closes: net/http's closeWriteAndWait, which it does not do for a
// client that said Connection: close.
func (c *trackedConn) lingerOnClose() { c.linger.Store(true) }

const (
	// lingerTime bounds how long a closed connection's input is drained.
	lingerTime = 500 * time.Millisecond
	// lingerBytes bounds how much of it is read.
	lingerBytes = 256 << 10
)

func (c *trackedConn) drainAndClose() {
	_ = c.Conn.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, c.Conn, lingerBytes)
	_ = c.closeNow()
	if c.lingering != nil {
		c.lingering.Add(-1)
	}
}

func (c *trackedConn) closeNow() error {
	err := c.Conn.Close()
	if c.limit != nil && c.released.CompareAndSwap(false, true) {
		c.limit.closed()
	}
	return err
}

func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *trackedConn) Write(p []byte) (int, error) { return c.ws.write(c.Conn, p) }

func (c *trackedConn) SetWriteDeadline(t time.Time) error { return c.ws.setDeadline(c.Conn, t) }

func (c *trackedConn) SetDeadline(t time.Time) error {
	err := c.Conn.SetReadDeadline(t)
	if err2 := c.ws.setDeadline(c.Conn, t); err == nil {
		err = err2
	}
	return err
}

// writeStalled reports whether the write-stall bound cut the connection.
func (c *trackedConn) writeStalled() bool { return c.ws.stalled() }

// ReadFrom copies r to the client through Write, each write under the
// write-stall bound, with a pooled buffer.
func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	big := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(big)
	return io.CopyBuffer(writerOnly{c}, r, *big)
}

// drainWriter tells the client to move when a response's header is
// written while the server drains, whenever the request arrived.
// HTTP/1.1: "Connection: close", and net/http closes the connection after
// the response. HTTP/2: the first step of the two-step GOAWAY (see
// goaway.go) if it has not been taken, else "Connection: close", which the
// HTTP/2 server answers with its own GOAWAY, the real one.
//
// It also closes an HTTP/1.1 connection after a request with a chunked
// body (close). RFC 9112 §6.1: a request with both Transfer-Encoding and
// Content-Length is read as chunked (net/http drops Content-Length, and
// the app never sees it), and the connection MUST close after the answer,
// for whoever in front read it by Content-Length disagrees on where the
// next request starts. net/http removes both fields before a handler sees
// the request, so the server cannot tell such a request from a chunked
// one: every chunked request closes its connection, which costs an honest
// chunked upload one new connection (and brings the client back to the
// fast path, which took no body).
type drainWriter struct {
	http.ResponseWriter
	draining *atomic.Bool
	h2       h2Drainer // nil for HTTP/1.1
	close    bool      // HTTP/1.1: close the connection after this answer
	wrote    bool
}

func (w *drainWriter) WriteHeader(code int) {
	if !w.wrote && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.wrote = true
		if code != http.StatusSwitchingProtocols && (w.close || w.draining.Load()) {
			w.moveClient()
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// moveClient asks the client to go elsewhere for its next requests.
func (w *drainWriter) moveClient() {
	if w.h2 != nil && !w.h2.readyForFinalGoAway(time.Now()) {
		w.h2.beginGoAway()
		return
	}
	w.Header().Set("Connection", "close")
}

func (w *drainWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// dropH2CUpgrade takes an HTTP/1.1 request's offer to upgrade to h2c out
// of h: the h2c token of Upgrade (and Upgrade, if that was all),
// HTTP2-Settings, and their names in Connection. tidegate does not take
// the offer (it serves h2c with prior knowledge), and the app must not
// either: it would answer 101 and speak HTTP/2 to a client that talks to
// tidegate. The request is served as plain HTTP/1.1, as a server that does
// not support the upgrade does (RFC 9113 §3.1 drops the upgrade; a
// server ignores an Upgrade it does not take, RFC 9110 §7.8).
func dropH2CUpgrade(h http.Header) {
	ups, settings := h["Upgrade"], h["Http2-Settings"]
	if ups == nil && settings == nil {
		return
	}
	delete(h, "Http2-Settings")
	h2c := false
	var rest []string
	for _, v := range ups {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); strings.EqualFold(tok, "h2c") {
				h2c = true
			} else if tok != "" {
				rest = append(rest, tok)
			}
		}
	}
	if h2c {
		if len(rest) == 0 {
			delete(h, "Upgrade")
		} else {
			h["Upgrade"] = []string{strings.Join(rest, ", ")}
		}
	}
	conn := h["Connection"]
	if conn == nil {
		return
	}
	var keep []string
	for _, v := range conn {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.TrimSpace(tok)
			if tok == "" || strings.EqualFold(tok, "http2-settings") || strings.EqualFold(tok, "upgrade") && h["Upgrade"] == nil {
				continue
			}
			keep = append(keep, tok)
		}
	}
	if len(keep) == 0 {
		delete(h, "Connection")
	} else {
		h["Connection"] = []string{strings.Join(keep, ", ")}
	}
}

// headerSlop is what net/http reads beyond Server.MaxHeaderBytes.
const headerSlop = 4096

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until Shutdown or Close; then it returns nil.
func (s *Server) Serve() error {
	if s.fast != nil {
		return s.serveWithFastPath()
	}
	var ln net.Listener = s.ln
	if s.tls != nil {
		ln = tls.NewListener(s.ln, s.tls)
	}
	if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !s.acceptStopped.Load() {
		return fmt.Errorf("serve %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// StopAccepting closes the listener and nothing else: the server accepts
// no new connection but keeps serving the ones it has, keep-alive ones
// included, until Shutdown or Close. Serve returns nil: at once, or with
// the fast path once Shutdown or Close begins (net/http serves the
// connections the fast path hands over until then). A config reload
// calls it on the server it replaces on the same socket: after BeginDrain,
// each keep-alive client's next request is answered (with Connection:
// close) instead of racing the close of its idle connection, which a
// request already on the wire would not survive.
func (s *Server) StopAccepting() {
	s.acceptStopped.Store(true)
	_ = s.ln.Close()
}

// BeginDrain tells clients to move. HTTP/2 connections get the first
// GOAWAY of the two-step at once, and the real one with a response after
// a round trip (or at Shutdown). HTTP/1.1: from now on every response
// carries "Connection: close", so each keep-alive connection closes right
// after its next answer. The listener keeps accepting. Idle HTTP/1.1
// connections are left open until Shutdown: closing them now, while load
// balancers have not noticed the drain, races with a request being written
// to them (golang/go#23829).
func (s *Server) BeginDrain() {
	s.draining.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.h2conns {
		c.beginGoAway()
	}
}

// EndDrain undoes BeginDrain: keep-alive is allowed again.
func (s *Server) EndDrain() { s.draining.Store(false) }

// Shutdown stops accepting, closes idle connections and waits for the
// others until ctx ends; then it returns ctx's error and the rest stay open
// until Close. It returns as soon as no connection is serving a request
// (net/http's own Shutdown may notice up to 500ms later), and closes
// connections that sent no request within NewConnGrace (net/http would wait
// 5s). Upgraded connections are not waited for: their requests stay counted
// in the Tracker, which the caller watches.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.shutdown(ctx)
	s.awaitLingering(ctx)
	return err
}

// awaitLingering waits until no connection is in its lingering close
// (trackedConn.lingerOnClose), at most lingerTime or until ctx ends: an
// answer just written in a drain must reach the client before the process
// exits, which would reset the connection.
func (s *Server) awaitLingering(ctx context.Context) {
	if s.ln.lingering.Load() == 0 {
		return
	}
	deadline := time.NewTimer(lingerTime + 50*time.Millisecond)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.ln.lingering.Load() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

func (s *Server) shutdown(ctx context.Context) error {
	s.finishFirstGoAways(ctx)
	s.stop()
	for _, c := range s.ownH2Conns() {
		c.shutdown()
	}
	if s.fast != nil {
		_ = s.ln.Close()
		s.closeIdleFast()
	}
	// Canceling sctx wakes net/http's Shutdown from its backoff sleep.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(sctx) }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	srvDone := done
	for {
		select {
		case err := <-srvDone:
			if s.fast == nil || err != nil || s.busy.Load() == 0 {
				return err
			}
			// net/http is done; fast-path connections are still busy.
			srvDone = nil
		case <-ctx.Done():
			cancel()
			if srvDone != nil {
				<-done
			}
			return ctx.Err()
		case <-tick.C:
		}
		s.closeStaleFresh()
		if s.fast != nil {
			s.closeIdleFast()
		}
		// net/http closes the listener first (after marking itself shut
		// down, so Serve returns ErrServerClosed rather than an error).
		if s.ln.closed.Load() && s.busy.Load() == 0 {
			// The listener is closed and nothing is being read or served:
			// what is left is idle, and net/http is closing it. Close
			// finishes that now.
			_ = s.srv.Close()
			cancel()
			if srvDone != nil {
				<-done
			}
			return nil
		}
	}
}

// stop marks the server as closing, for the fast path's connections and
// its accept loop.
func (s *Server) stop() {
	s.closing.Store(true)
	s.stopOnce.Do(func() { close(s.stopped) })
}

// finishFirstGoAways takes the first GOAWAY step on every HTTP/2
// connection that has not had it, and waits until each may get the real
// one (its PING came back), at most goAwayRTTBound or until ctx ends: the
// real GOAWAY goes to every connection when Shutdown starts.
func (s *Server) finishFirstGoAways(ctx context.Context) {
	s.mu.Lock()
	conns := make([]h2Drainer, 0, len(s.h2conns))
	for c := range s.h2conns {
		c.beginGoAway()
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if len(conns) == 0 {
		return
	}
	deadline := time.NewTimer(s.goAwayBound)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		conns = slices.DeleteFunc(conns, func(c h2Drainer) bool { return c.readyForFinalGoAway(now) })
		if len(conns) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// ownH2Conns lists the connections of tidegate's own HTTP/2 server.
func (s *Server) ownH2Conns() []*h2sConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cs []*h2sConn
	for c := range s.h2conns {
		if hc, ok := c.(*h2sConn); ok {
			cs = append(cs, hc)
		}
	}
	return cs
}

// closeStaleFresh closes connections that have waited longer than the
// grace for their first request.
func (s *Server) closeStaleFresh() {
	cutoff := time.Now().Add(-s.grace)
	var stale []*trackedConn
	s.mu.Lock()
	for c, at := range s.fresh {
		if at.Before(cutoff) {
			stale = append(stale, c)
			delete(s.fresh, c)
		}
	}
	s.mu.Unlock()
	for _, c := range stale {
		_ = c.Close()
	}
}

// Close closes the listener and every connection at once. It closes the
// listener even if Serve never ran (net/http closes only the listeners it
// serves): a server built on a Socket's view and dropped unserved, by a
// refused reload, must give the view back or the socket never closes.
func (s *Server) Close() error {
	s.stop()
	for _, c := range s.ownH2Conns() {
		c.closeNow()
	}
	err := s.srv.Close()
	_ = s.ln.Close()
	if s.fast != nil {
		s.closeAllFast()
	}
	return err
}
