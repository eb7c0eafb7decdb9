package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tidegate/tidegate/proxy"
)

// publicServer is an HTTP or a TCP public listener's server: what the drain
// steers, plus serving.
type publicServer interface {
	Serve() error
	Addr() net.Addr
	BeginDrain()
	EndDrain()
	Shutdown(ctx context.Context) error
	Close() error
	// StopAccepting closes the listener only: the connections are served
	// on until Shutdown or Close.
	StopAccepting()
}

// listenerPlan is everything a public listener's server and handler are
// built from. A config reload that leaves it equal keeps the server; one
// that changes it builds a new server on the same socket (or on a new one,
// for a new address) and drains the old one.
type listenerPlan struct {
	Name, Address, Protocol, Upstream string
	TLSCert, TLSKey                   string // a renewed certificate under the same names keeps the server (KeyPair.Reload)

	Server    ServerConfig
	App       UpstreamConfig // its Address is the default upstream; Upstream above is this listener's
	AccessLog bool
}

// planFor returns the plan of listener pl under cfg.
func planFor(pl listenerSpec, cfg *Config) listenerPlan {
	p := listenerPlan{Name: pl.Name, Address: pl.Address, Protocol: pl.Protocol, Upstream: pl.Upstream,
		Server: cfg.Server, App: cfg.Upstream, AccessLog: cfg.AccessLog != off}
	if pl.TLS != nil {
		p.TLSCert, p.TLSKey = pl.TLS.Cert, pl.TLS.Key
	}
	return p
}

// publicListener is one public listener: its socket, and the server that
// accepts from it now.
type publicListener struct {
	spec    listenerSpec
	plan    listenerPlan
	sock    *proxy.Socket
	limit   *proxy.ConnLimit // the socket's: shared by the servers that take turns on it
	srv     publicServer
	handler *proxy.Handler // nil for tcp
	keys    *proxy.KeyPair // nil without TLS
}

// frontends is the set of public listeners, which a config reload changes
// while they serve; the drain steers all of them as one (drain.Frontend).
// A replaced server is retired: it drains on its own (retire) and the
// drain of the whole sidecar cuts it at its deadline like any other.
type frontends struct {
	log *zap.Logger

	mu       sync.Mutex
	live     []*publicListener             // in configuration order
	retiring map[*publicListener]time.Time // replaced servers still draining → since
	draining bool                          // BeginDrain without EndDrain: new servers drain from the start
	shut     chan struct{}                 // closed by Shutdown or Close: retirements stop waiting

	wg   sync.WaitGroup // Serve goroutines and retirements
	errs chan error     // a Serve that failed; buffered, the first is enough to drain
}

func newFrontends(log *zap.Logger) *frontends {
	return &frontends{log: log, retiring: map[*publicListener]time.Time{}, shut: make(chan struct{}), errs: make(chan error, 1)}
}

// list returns the live listeners.
func (f *frontends) list() []*publicListener {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.live)
}

// serve starts p's server. A Serve that fails is logged and reported on
// errs (the sidecar then drains).
func (f *frontends) serve(p *publicListener) {
	f.mu.Lock()
	if f.draining { // under the lock: an EndDrain cannot slip in between
		p.srv.BeginDrain()
	}
	f.mu.Unlock()
	f.start(p)
}

// start runs p's Serve.
func (f *frontends) start(p *publicListener) {
	f.wg.Go(func() {
		if err := p.srv.Serve(); err != nil {
			f.log.Error("listener failed", zap.String("listener", p.spec.Name), zap.String("reason", "listener_error"), zap.Error(err))
			select {
			case f.errs <- err:
			default:
			}
		}
	})
}

// replace makes next the live set: servers of next not live yet start,
// live servers not in next retire. Each retiring server drains for delay
// before it shuts down, and is cut after timeout. When its socket goes
// away with it (a moved or removed listener) it keeps accepting meanwhile,
// so that clients racing the change are still answered; when a new server
// has taken its socket over, it stops accepting at once but keeps serving
// its connections, so that each keep-alive client's next request gets an
// answer with Connection: close rather than a closed connection.
//
// Once Shutdown or Close has begun (a drain that started while the reload
// was being prepared), replace refuses: it closes the servers of next that
// are not live and changes nothing, since the drain would never stop a
// server started after its Shutdown.
func (f *frontends) replace(next []*publicListener, delay, timeout time.Duration) error {
	f.mu.Lock()
	old := f.live
	select {
	case <-f.shut:
		f.mu.Unlock()
		for _, p := range next {
			if !slices.Contains(old, p) {
				_ = p.srv.Close()
			}
		}
		return errors.New("the listeners are shutting down: a drain began during the reload")
	default:
	}
	f.live = next
	var added []*publicListener
	for _, p := range next {
		if !slices.Contains(old, p) {
			if f.draining {
				p.srv.BeginDrain()
			}
			added = append(added, p)
		}
	}
	f.mu.Unlock()
	// A Shutdown from here on sees the added servers in live: a Serve that
	// starts after their Shutdown returns at once.
	for _, p := range added {
		f.start(p)
	}
	for _, p := range old {
		if slices.Contains(next, p) {
			continue
		}
		kept := slices.ContainsFunc(next, func(n *publicListener) bool { return n.sock == p.sock })
		f.retire(p, kept, delay, timeout)
	}
	return nil
}

// retire drains p on its own: Connection: close and GOAWAY at once; for
// delay keep accepting (or, when taken over is set, only serving the
// connections it has); then shut down, waiting for what it serves until
// timeout (counted from now), then cut it.
func (f *frontends) retire(p *publicListener, takenOver bool, delay, timeout time.Duration) {
	f.mu.Lock()
	f.retiring[p] = time.Now()
	shut := f.shut
	f.mu.Unlock()
	log := f.log.With(zap.String("listener", p.spec.Name), zap.String("address", p.spec.Address))
	log.Info("retiring the listener's old server", zap.String("phase", "retiring"), zap.Duration("delay", delay), zap.Duration("timeout", timeout),
		zap.Bool("taken_over", takenOver))
	if takenOver {
		// Before the reload returns: a connection accepted from now on is
		// the new server's, under the new config.
		p.srv.StopAccepting()
	}
	f.wg.Go(func() {
		defer func() {
			f.mu.Lock()
			delete(f.retiring, p)
			f.mu.Unlock()
		}()
		start := time.Now()
		p.srv.BeginDrain()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-shut:
			case <-ctx.Done():
			}
			t.Stop()
		}
		err := p.srv.Shutdown(ctx)
		// Upgraded connections are the handler's: wait for them too, as
		// the sidecar's drain does, then cut what is left.
		for err == nil && p.handler != nil && p.handler.Upgraded() > 0 {
			t := time.NewTimer(10 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				err = ctx.Err()
			case <-shut:
				err = errors.New("the sidecar is draining")
			}
			t.Stop()
		}
		if p.handler != nil {
			p.handler.CloseUpgraded()
		}
		_ = p.srv.Close()
		if p.handler != nil {
			p.handler.CloseIdleConnections()
		}
		result := "complete"
		if err != nil {
			result = "cut"
		}
		log.Info("old server retired", zap.String("phase", "retired"), zap.String("result", result),
			zap.Duration("duration", time.Since(start)))
	})
}

// BeginDrain tells the clients of every live server to move (retiring
// ones are draining already).
func (f *frontends) BeginDrain() { f.setDraining(true) }

// EndDrain lets the live servers keep connections alive again.
func (f *frontends) EndDrain() { f.setDraining(false) }

func (f *frontends) setDraining(on bool) {
	f.mu.Lock()
	f.draining = on
	live := slices.Clone(f.live)
	f.mu.Unlock()
	for _, p := range live {
		if on {
			p.srv.BeginDrain()
		} else {
			p.srv.EndDrain()
		}
	}
}

func (f *frontends) closeShut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.shut:
	default:
		close(f.shut)
	}
}

// Shutdown shuts every live server down at once and returns the first
// error; the sockets close with them.
func (f *frontends) Shutdown(ctx context.Context) error {
	f.closeShut()
	live := f.list()
	errs := make(chan error, len(live))
	for _, p := range live {
		go func() { errs <- p.srv.Shutdown(ctx) }()
	}
	var first error
	for range live {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Close cuts what is left on every server, live or retiring: WebSocket
// sessions get close frames 1001 (going away) at both ends while every
// other connection is closed at once.
func (f *frontends) Close() error {
	f.closeShut()
	f.mu.Lock()
	all := slices.Clone(f.live)
	for p := range f.retiring {
		all = append(all, p)
	}
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range all {
		if p.handler != nil {
			wg.Go(p.handler.CloseUpgraded)
		}
	}
	var first error
	for _, p := range all {
		if err := p.srv.Close(); err != nil && first == nil {
			first = err
		}
	}
	wg.Wait()
	return first
}

// closeIdle closes the idle app connections of every live handler.
func (f *frontends) closeIdle() {
	for _, p := range f.list() {
		if p.handler != nil {
			p.handler.CloseIdleConnections()
		}
	}
}

// wait returns once every Serve and every retirement has returned.
func (f *frontends) wait() { f.wg.Wait() }

// buildListeners builds a server for each listener of l that is not in
// keep with an equal plan, on the socket of the kept listener with its
// address, else on a new socket. It returns the new live set in l's order
// and the sockets it bound. On error it releases what it made; nothing of
// keep is touched.
func (s *sidecar) buildListeners(l *loaded, keep []*publicListener) (next []*publicListener, err error) {
	var made []*publicListener
	var bound []*proxy.Socket
	defer func() {
		if err != nil {
			for _, p := range made {
				_ = p.srv.Close()
			}
			for _, sock := range bound {
				_ = sock.Close()
			}
		}
	}()
	// A socket serves one listener: the kept listeners' sockets are taken,
	// and a changed listener takes over the socket of a listener with its
	// address. An address with port 0 names no socket (each bind gets its
	// own port): there only the listener's own socket, by name, is reused.
	taken := map[*proxy.Socket]bool{}
	for _, pl := range l.listeners {
		plan := planFor(pl, &l.cfg)
		if i := slices.IndexFunc(keep, func(p *publicListener) bool { return p.plan == plan }); i >= 0 {
			taken[keep[i].sock] = true
		}
	}
	for _, pl := range l.listeners {
		plan := planFor(pl, &l.cfg)
		i := slices.IndexFunc(keep, func(p *publicListener) bool { return p.plan == plan })
		if i >= 0 {
			if p := keep[i]; p.keys != nil { // the same files, maybe renewed: they must load
				if _, err := tls.LoadX509KeyPair(pl.TLS.Cert, pl.TLS.Key); err != nil {
					return nil, usageError{fmt.Errorf("listener %s: tls: certificate %s with key %s: %w", pl.Name, pl.TLS.Cert, pl.TLS.Key, err)}
				}
			}
			next = append(next, keep[i])
			continue
		}
		var sock *proxy.Socket
		var limit *proxy.ConnLimit
		if j := slices.IndexFunc(keep, func(p *publicListener) bool {
			return !taken[p.sock] && p.spec.Address == pl.Address && (p.spec.Name == pl.Name || !anyPort(pl.Address))
		}); j >= 0 {
			sock, limit = keep[j].sock, keep[j].limit
			taken[sock] = true
		} else {
			ln, err := proxy.Listen(pl.Address)
			if err != nil {
				return nil, fmt.Errorf("listener %s: %w", pl.Name, err)
			}
			sock = proxy.NewSocket(ln)
			bound = append(bound, sock)
			limit = proxy.NewConnLimit(s.limits.maxConnections)
		}
		view, err := sock.View()
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", pl.Name, err)
		}
		up, err := proxy.ParseUpstream(pl.Upstream)
		if err != nil {
			_ = view.Close()
			return nil, usageError{err}
		}
		p := &publicListener{spec: pl, plan: plan, sock: sock, limit: limit}
		cfg := &l.cfg
		if pl.Protocol == "tcp" {
			p.srv = proxy.NewTCPServer(view, up, s.tracker, proxy.TCPOptions{DialTimeout: cfg.Upstream.DialTimeout,
				Logger: s.log.Named("tcp"), Metrics: s.metrics, ConnLimit: limit, WriteStallTimeout: cfg.Server.WriteStallTimeout})
		} else {
			// A handler of its own, not one shared by the listeners of an
			// upstream: the retirement of this server waits for and cuts
			// the handler's upgraded sessions, which must be this
			// server's only, not those of another listener's live server.
			ph, err := s.newProxyHandler(cfg, up)
			if err != nil {
				_ = view.Close()
				return nil, usageError{err}
			}
			p.handler = ph
			var tlsCfg *tls.Config
			if pl.TLS != nil {
				p.keys, err = proxy.NewKeyPair(proxy.TLSOptions{CertFile: pl.TLS.Cert, KeyFile: pl.TLS.Key, Logger: s.log.Named("tls")})
				if err != nil {
					_ = view.Close()
					return nil, usageError{fmt.Errorf("listener %s: %w", pl.Name, err)}
				}
				tlsCfg = p.keys.Config()
			}
			var fastPath *proxy.Handler
			if !cfg.Server.NetHTTPOnly {
				fastPath = ph
			}
			p.srv = proxy.NewServer(view, s.gate.wrap(ph), s.tracker, proxy.ServerOptions{
				TLS:               tlsCfg,
				ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
				IdleTimeout:       cfg.Server.IdleTimeout,
				WriteStallTimeout: cfg.Server.WriteStallTimeout,
				MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
				Logger:            s.log.Named("public"),
				FastPath:          fastPath,
				FastPathOpen:      s.gate.open,
				ConnLimit:         limit,
			})
		}
		made = append(made, p)
		next = append(next, p)
	}
	for _, p := range made { // after every error: a failed reload leaves the metrics as they were
		s.metrics.WatchConnLimit(p.spec.Name, p.limit)
	}
	return next, nil
}

// anyPort reports whether a listen address asks for any free port (port 0).
func anyPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && (port == "0" || port == "")
}
