package proxy

import (
	"strings"
	"sync/atomic"
	"time"
)

// Protocol names a kind of client connection. Its String form is the value of
// the protocol label of tidegate_connections_active.
type Protocol uint8

// The protocols the data plane counts. Later protocols (h2, websocket, tcp)
// are added here; the tracker sizes its counters from numProtocols.
const (
	ProtocolHTTP1     Protocol = iota
	ProtocolH2C                // HTTP/2 over cleartext, prior knowledge
	ProtocolTCP                // raw TCP listeners
	ProtocolWebSocket          // upgraded WebSocket sessions
	ProtocolH2                 // HTTP/2 over TLS
	ProtocolUpgrade            // other upgraded connections (not WebSocket)
	ProtocolConnect            // CONNECT tunnels to the app
	numProtocols
)

var protocolNames = [numProtocols]string{
	ProtocolHTTP1:     "http1",
	ProtocolH2C:       "h2c",
	ProtocolTCP:       "tcp",
	ProtocolWebSocket: "websocket",
	ProtocolH2:        "h2",
	ProtocolUpgrade:   "upgrade",
	ProtocolConnect:   "connect",
}

func (p Protocol) String() string {
	if p < numProtocols {
		return protocolNames[p]
	}
	return "unknown"
}

// Protocols lists every Protocol, in label order.
func Protocols() []Protocol {
	ps := make([]Protocol, numProtocols)
	for i := range ps {
		ps[i] = Protocol(i)
	}
	return ps
}

// Tracker counts what is in flight: requests being proxied, client
// connections open (by protocol), and the time of the last request that did
// not come from a health checker. It is the number a drain waits on.
//
// All methods are safe for concurrent use and lock-free: the hot path is a
// few atomic adds. The zero value is not usable; call NewTracker.
type Tracker struct {
	inflight     atomic.Int64
	conns        [numProtocols]atomic.Int64
	lastActivity atomic.Int64 // unix nanoseconds; 0 = never
	total        atomic.Uint64

	now         func() time.Time
	probeAgents []string
}

// TrackerOptions configures a Tracker.
type TrackerOptions struct {
	// ProbeUserAgents lists User-Agent prefixes of health checkers. Requests
	// whose User-Agent starts with one of them are counted in flight but do
	// not move LastActivity, so probes never keep a drain's quiet period from
	// ending. Nil means DefaultProbeUserAgents; an empty non-nil slice means
	// no request is treated as a probe.
	ProbeUserAgents []string

	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// DefaultProbeUserAgents is the User-Agent prefix list used when
// TrackerOptions.ProbeUserAgents is nil: the kubelet's probes.
var DefaultProbeUserAgents = []string{"kube-probe/"}

// NewTracker returns a Tracker with nothing in flight.
func NewTracker(opts TrackerOptions) *Tracker {
	t := &Tracker{now: opts.Now, probeAgents: opts.ProbeUserAgents}
	if t.now == nil {
		t.now = time.Now
	}
	if t.probeAgents == nil {
		t.probeAgents = DefaultProbeUserAgents
	}
	return t
}

// InFlight returns the number of requests being proxied now.
func (t *Tracker) InFlight() int64 { return t.inflight.Load() }

// Requests returns the number of requests started since the tracker was made.
func (t *Tracker) Requests() uint64 { return t.total.Load() }

// Connections returns the number of open client connections of protocol p.
func (t *Tracker) Connections(p Protocol) int64 {
	if p >= numProtocols {
		return 0
	}
	return t.conns[p].Load()
}

// ConnectionsTotal returns the number of open client connections of every
// protocol.
func (t *Tracker) ConnectionsTotal() int64 {
	var n int64
	for i := range t.conns {
		n += t.conns[i].Load()
	}
	return n
}

// LastActivity returns when the last non-probe request started, or the zero
// time if none has.
func (t *Tracker) LastActivity() time.Time {
	ns := t.lastActivity.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// isProbeUA is IsProbe for a User-Agent still in a read buffer.
func (t *Tracker) isProbeUA(ua []byte) bool {
	for _, p := range t.probeAgents {
		if len(ua) >= len(p) && string(ua[:len(p)]) == p {
			return true
		}
	}
	return false
}

// IsProbe reports whether a User-Agent belongs to a health checker.
func (t *Tracker) IsProbe(userAgent string) bool {
	for _, p := range t.probeAgents {
		if strings.HasPrefix(userAgent, p) {
			return true
		}
	}
	return false
}

// RequestStarted records a request entering the proxy. probe says whether it
// came from a health checker (see IsProbe). Every call must be paired with
// one RequestDone.
func (t *Tracker) RequestStarted(probe bool) {
	t.inflight.Add(1)
	t.total.Add(1)
	if !probe {
		t.lastActivity.Store(t.now().UnixNano())
	}
}

// requestStartedAt is RequestStarted for a data path that has read the
// clock already: the request began at now.
func (t *Tracker) requestStartedAt(probe bool, now time.Time) {
	t.inflight.Add(1)
	t.total.Add(1)
	if !probe {
		t.lastActivity.Store(now.UnixNano())
	}
}

// RequestDone records a request leaving the proxy.
func (t *Tracker) RequestDone() { t.inflight.Add(-1) }

// ConnOpened records a client connection of protocol p.
func (t *Tracker) ConnOpened(p Protocol) {
	if p < numProtocols {
		t.conns[p].Add(1)
	}
}

// ConnClosed records the end of a client connection of protocol p.
func (t *Tracker) ConnClosed(p Protocol) {
	if p < numProtocols {
		t.conns[p].Add(-1)
	}
}

// ConnMoved records that an open connection turned out to speak to, not
// from (an HTTP/2 connection is counted as HTTP/1.1 until its first request).
func (t *Tracker) ConnMoved(from, to Protocol) {
	if from < numProtocols && to < numProtocols && from != to {
		t.conns[to].Add(1)
		t.conns[from].Add(-1)
	}
}

// Snapshot is a consistent-enough view of a Tracker for /status and logs.
// Each field is read atomically; the fields are not read as one.
type Snapshot struct {
	InFlight     int64            `json:"inflight_requests"`
	Requests     uint64           `json:"requests_total"`
	Connections  map[string]int64 `json:"connections"`
	LastActivity *time.Time       `json:"last_activity,omitempty"`
}

// Snapshot returns the current counts.
func (t *Tracker) Snapshot() Snapshot {
	s := Snapshot{
		InFlight:    t.InFlight(),
		Requests:    t.Requests(),
		Connections: make(map[string]int64, numProtocols),
	}
	for _, p := range Protocols() {
		s.Connections[p.String()] = t.Connections(p)
	}
	if la := t.LastActivity(); !la.IsZero() {
		s.LastActivity = &la
	}
	return s
}
