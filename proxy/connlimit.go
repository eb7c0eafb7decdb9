package proxy

import (
	"errors"
	"math"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// ConnLimit bounds the client connections open at once on one listening
// socket, as HAProxy's maxconn does: at the limit the socket's accept loop
// stops calling accept(2) until a connection closes, so new clients wait in
// the kernel's listen backlog (bounded by net.core.somaxconn) instead of
// taking open files that the health and admin listeners, the app pool and
// the logs need.
//
// A ConnLimit belongs to the socket, not to a server: every Server or
// TCPServer that serves the socket (an old and a new one across a reload)
// shares it, through ServerOptions.ConnLimit or TCPOptions.ConnLimit.
//
// Bound: slots taken ≤ Max, where a slot is held by each connection from
// accept to its first Close, and by each accept loop from just before it
// calls accept(2) until that call returns. So the connections a server
// holds never exceed Max. Behind a Socket (servers that take turns on one
// listening socket), the Socket's accept goroutine may hold one more
// accepted connection that no server has taken yet: Max+1 per socket. The
// wait for a slot ends when a connection of the socket closes or when the
// waiting server's listener is closed.
//
// A nil *ConnLimit means no limit and counts nothing.
type ConnLimit struct {
	max   int           // 0: no limit
	slots chan struct{} // a semaphore of capacity max (zero-size elements: no memory per slot); nil without a limit
	open  atomic.Int64  // connections accepted and not closed yet

	waits     atomic.Uint64 // accepts that waited for a slot
	acceptErr [numAcceptErrors]atomic.Uint64
	lastWarn  atomic.Int64 // unix nanoseconds of the last "limit reached" log line
}

// NewConnLimit returns the limit of one listening socket: at most max client
// connections open at once. max ≤ 0 means no limit (the connections and
// accept errors are still counted).
func NewConnLimit(max int) *ConnLimit {
	l := &ConnLimit{}
	if max > 0 {
		l.max = max
		l.slots = make(chan struct{}, max)
	}
	return l
}

// Max is the limit; 0 means none.
func (l *ConnLimit) Max() int {
	if l == nil {
		return 0
	}
	return l.max
}

// Open is the number of connections accepted on the socket and not closed
// yet, by every server that shares the limit.
func (l *ConnLimit) Open() int64 {
	if l == nil {
		return 0
	}
	return l.open.Load()
}

// acquire takes a slot, waiting while every slot is taken until one frees
// up or stop is closed; false means stop was closed first. log receives a
// warning when the limit makes the accept wait, at most once per
// limitWarnEvery.
func (l *ConnLimit) acquire(stop <-chan struct{}, log *zap.Logger, addr string) bool {
	if l == nil || l.slots == nil {
		return true
	}
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	l.waits.Add(1)
	if now, last := time.Now().UnixNano(), l.lastWarn.Load(); now-last >= int64(limitWarnEvery) && l.lastWarn.CompareAndSwap(last, now) {
		log.Warn("connection limit reached; new connections wait in the listen backlog until one closes",
			zap.String("reason", "max_connections"), zap.String("listen", addr),
			zap.Int("max_connections", l.max), zap.Int64("open", l.open.Load()))
	}
	select {
	case l.slots <- struct{}{}:
		return true
	case <-stop:
		return false
	}
}

// limitWarnEvery spaces the "limit reached" warnings of one socket.
const limitWarnEvery = time.Minute

// release gives back a slot taken by acquire.
func (l *ConnLimit) release() {
	if l == nil || l.slots == nil {
		return
	}
	select {
	case <-l.slots:
	default: // a release without its acquire: a bug, which must not hang a Close
	}
}

// opened moves an acquired slot to an accepted connection.
func (l *ConnLimit) opened() {
	if l != nil {
		l.open.Add(1)
	}
}

// closed releases a connection's slot; the caller makes sure it runs once
// per connection.
func (l *ConnLimit) closed() {
	if l != nil {
		l.open.Add(-1)
		l.release()
	}
}

// acceptError kinds, the reason label of tidegate_accept_errors_total.
const (
	acceptEMFILE = iota // the process is out of open files
	acceptENFILE        // the system is out of open files
	acceptOther
	numAcceptErrors
)

var acceptErrorReasons = [numAcceptErrors]string{"emfile", "enfile", "other"}

// acceptFailed counts a failed accept(2), other than the listener's close.
func (l *ConnLimit) acceptFailed(err error) {
	if l == nil {
		return
	}
	kind := acceptOther
	switch {
	case errors.Is(err, syscall.EMFILE):
		kind = acceptEMFILE
	case errors.Is(err, syscall.ENFILE):
		kind = acceptENFILE
	}
	l.acceptErr[kind].Add(1)
}

// FileReserve is how many open files the connection limit leaves to
// everything but the public listeners' connections when it is derived from
// the open-file limit: the health and admin listeners and their clients,
// probes, log files, the app's pooled connections beyond one per client,
// and the runtime's own (epoll, pipes). It is a tenth of nofile, at least 64.
func FileReserve(nofile uint64) uint64 { return max(64, nofile/10) }

// MaxConnectionsFor is the connection limit per public listener that keeps
// tidegate within nofile open files with listeners public listeners:
//
//	(nofile − FileReserve(nofile)) / 2 / listeners
//
// since each proxied connection may hold two files, the client's and one
// to the app. It is at least 1, and 0 (no limit) when nofile is unlimited
// (RLIM_INFINITY) or too large to matter (more than 2^31).
func MaxConnectionsFor(nofile uint64, listeners int) int {
	if nofile > math.MaxInt32 {
		return 0
	}
	listeners = max(listeners, 1)
	budget := int64(nofile) - int64(FileReserve(nofile))
	return int(max(budget/2/int64(listeners), 1))
}
