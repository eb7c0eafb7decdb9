package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Upstream is where the app listens.
type Upstream struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is host:port for tcp, a socket path for unix.
	Address string
}

// String returns the upstream in the form ParseUpstream accepts.
func (u Upstream) String() string {
	if u.Network == "unix" {
		return "unix://" + u.Address
	}
	return "http://" + u.Address
}

// ParseUpstream parses the app's address. Accepted forms:
//
//	host:port            127.0.0.1:3000, [::1]:3000, app:3000
//	:port                the app on this host (127.0.0.1)
//	http://host:port     the same, spelled as a URL; no path, query or user
//	unix:///path.sock    a Unix domain socket (absolute path)
func ParseUpstream(s string) (Upstream, error) {
	if s == "" {
		return Upstream{}, fmt.Errorf("upstream is empty: give host:port, http://host:port or unix:///path.sock")
	}
	switch {
	case strings.HasPrefix(s, "unix://"):
		path := strings.TrimPrefix(s, "unix://")
		if !strings.HasPrefix(path, "/") {
			return Upstream{}, fmt.Errorf("upstream %q: a unix socket path must be absolute, as in unix:///run/app.sock", s)
		}
		return Upstream{Network: "unix", Address: path}, nil
	case strings.Contains(s, "://"):
		u, err := url.Parse(s)
		if err != nil {
			return Upstream{}, fmt.Errorf("upstream %q: %w", s, err)
		}
		if u.Scheme != "http" {
			return Upstream{}, fmt.Errorf("upstream %q: scheme %q is not supported: use http://host:port or unix:///path.sock", s, u.Scheme)
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
			return Upstream{}, fmt.Errorf("upstream %q: give only scheme, host and port (no path, query or credentials)", s)
		}
		s = u.Host
	}
	host, port, err := SplitHostPort(s)
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream %q: %w", s, err)
	}
	if port == 0 {
		return Upstream{}, fmt.Errorf("upstream %q: port 0 is not a port an app listens on", s)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if !validHost(host) {
		return Upstream{}, fmt.Errorf("upstream %q: host %q is neither an IP address nor a host name", s, host)
	}
	return Upstream{Network: "tcp", Address: net.JoinHostPort(host, strconv.Itoa(port))}, nil
}

// validHost accepts an IP address or a DNS name (letters, digits, '-', '_'
// and dots).
func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// SplitHostPort splits host:port and checks that the port is a number from 0
// to 65535. The host may be empty (all interfaces, or this host).
func SplitHostPort(s string) (host string, port int, err error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("not host:port: %w", unwrapAddrErr(err))
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", ps)
	}
	return host, port, nil
}

func unwrapAddrErr(err error) error {
	if ae, ok := err.(*net.AddrError); ok {
		return fmt.Errorf("%s", ae.Err)
	}
	return err
}

// TransportOptions tunes the pool of connections to the app.
type TransportOptions struct {
	// DialTimeout bounds connecting to the app. Zero means no bound beyond
	// the request's own context. Config default: 5s.
	DialTimeout time.Duration

	// ResponseHeaderTimeout bounds the wait for the app's response headers
	// after the request has been written; past it the client gets 504.
	// Zero means no bound. Config default: 60s.
	ResponseHeaderTimeout time.Duration

	// IdleConnTimeout closes pooled connections idle for this long. Keep it
	// below the app's own keep-alive timeout so that tidegate, not the app,
	// closes idle connections. Zero means they are kept until the app closes
	// them. Config default: 60s.
	IdleConnTimeout time.Duration

	// MaxIdleConns caps idle pooled connections to the app. It should be at
	// least the number of concurrent clients expected: a pool smaller than
	// the concurrency closes connections after each request and burns
	// ephemeral ports. Zero means 1024.
	MaxIdleConns int

	// ExpectContinueTimeout is how long to wait for the app's "100 Continue"
	// before sending a request body announced with "Expect: 100-continue".
	// Zero means the body is sent at once. Config default: 1s.
	ExpectContinueTimeout time.Duration
}

// NewTransport returns an HTTP/1.1 transport to up whose idle pool grows with
// client concurrency. It never uses proxies from the environment and never
// negotiates HTTP/2 with the app.
func NewTransport(up Upstream, o TransportOptions) *http.Transport {
	maxIdle := o.MaxIdleConns
	if maxIdle <= 0 {
		maxIdle = 1024
	}
	d := &net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second}
	dial := d.DialContext
	if up.Network == "unix" {
		path := up.Address
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		}
	}
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            dial,
		MaxIdleConns:           maxIdle,
		MaxIdleConnsPerHost:    maxIdle,
		IdleConnTimeout:        o.IdleConnTimeout,
		ResponseHeaderTimeout:  o.ResponseHeaderTimeout,
		ExpectContinueTimeout:  o.ExpectContinueTimeout,
		DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
		ForceAttemptHTTP2:      false,
		MaxResponseHeaderBytes: 1 << 20,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
}

// UpstreamProtocol says how requests reach the app.
type UpstreamProtocol string

// The upstream protocols.
const (
	UpstreamHTTP1 UpstreamProtocol = "http1" // HTTP/1.1 for every request
	UpstreamH2C   UpstreamProtocol = "h2c"   // HTTP/2 with prior knowledge for every request
	// UpstreamAuto sends gRPC requests that arrived over HTTP/2 over h2c,
	// and everything else over HTTP/1.1.
	UpstreamAuto UpstreamProtocol = "auto"
)

// NewH2CTransport is NewTransport speaking HTTP/2 with prior knowledge
// (h2c) to the app: one connection carries many concurrent streams. It has
// no response-header timeout: gRPC streams may wait long for their first
// message (a watch), and gRPC carries its own deadline in grpc-timeout.
func NewH2CTransport(up Upstream, o TransportOptions) *http.Transport {
	o.ResponseHeaderTimeout = 0
	tr := NewTransport(up, o)
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return tr
}

// router picks the transport for each request.
type router struct {
	mode    UpstreamProtocol
	h1, h2c http.RoundTripper
}

func (rt router) RoundTrip(req *http.Request) (*http.Response, error) {
	switch rt.mode {
	case UpstreamH2C:
		return rt.h2c.RoundTrip(req)
	case UpstreamAuto:
		if st := stateOf(req.Context()); st != nil && st.h2 && isGRPC(req.Header.Get("Content-Type")) {
			return rt.h2c.RoundTrip(req)
		}
	}
	return rt.h1.RoundTrip(req)
}

func (rt router) CloseIdleConnections() {
	for _, t := range []http.RoundTripper{rt.h1, rt.h2c} {
		if c, ok := t.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

// isGRPC reports whether a content type is gRPC's (application/grpc,
// application/grpc+proto, application/grpc-web is not: it is HTTP/1-friendly).
func isGRPC(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// targetHost is the host part of the URL the transport dials. For unix
// sockets it is a placeholder; the dialer ignores it.
func (u Upstream) targetHost() string {
	if u.Network == "unix" {
		return "unix-socket"
	}
	return u.Address
}
