package healthz

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Kind is what a probe decides: readiness, liveness or startup.
type Kind string

// The probe kinds.
const (
	Readiness Kind = "readiness"
	Liveness  Kind = "liveness"
	Startup   Kind = "startup"
)

// Kubernetes' probe defaults, applied to zero fields by Spec.withDefaults.
const (
	DefaultPeriod           = 10 * time.Second
	DefaultTimeout          = time.Second
	DefaultSuccessThreshold = 1
	DefaultFailureThreshold = 3
)

// Limits of the kubelet, kept by tidegate's probers.
const (
	maxBodyBytes   = 10 << 10 // response body and exec output read per attempt
	maxRedirects   = 10
	probeUserAgent = "tidegate-probe/"
)

// Spec is one probe: what to check, how often, and how many results flip
// its state. Zero timing fields take Kubernetes' defaults.
type Spec struct {
	// Name is unique among all probes; it names the check in /readyz
	// verbose output, /readyz/<name> and the probe metric label. Empty means
	// "<container>/<kind>" (with "-2", "-3"… for further probes of a kind).
	Name string
	// Container groups probes for /app-health/<container>/…; empty is "app".
	Container string
	Kind      Kind

	// Exactly one of the four actions.
	HTTPGet   *HTTPGetAction
	TCPSocket *TCPSocketAction
	GRPC      *GRPCAction
	Exec      *ExecAction

	InitialDelay time.Duration // default 0
	Period       time.Duration // default 10s
	// StartPeriod, if set, is how often the probe runs until it first
	// passes, instead of Period: tidegate's implicit upstream check looks
	// every 50ms, so that readiness follows an app that starts listening
	// within one StartPeriod. Zero means Period (the kubelet's way).
	StartPeriod      time.Duration
	Timeout          time.Duration // default 1s, per attempt
	SuccessThreshold int           // default 1; must be 1 for liveness and startup
	FailureThreshold int           // default 3

	// Implicit marks a probe that tidegate added itself (the upstream
	// connect check when no readiness probe is configured); /status shows
	// it. The zero value is a configured probe.
	Implicit bool
}

// HTTPGetAction is an HTTP GET probe: 200–399 is success.
type HTTPGetAction struct {
	Scheme  string // "http" (default) or "https" (certificate not verified, as the kubelet)
	Host    string // default 127.0.0.1
	Port    int
	Path    string // default "/"
	Headers http.Header
}

// TCPSocketAction succeeds when a TCP connection opens.
type TCPSocketAction struct {
	Host string // default 127.0.0.1
	Port int
	// Unix, if set, is a unix socket path to connect to instead of
	// Host:Port (an app behind a unix socket; not in Kubernetes' schema).
	// Empty means TCP.
	Unix string
}

// GRPCAction calls grpc.health.v1.Health/Check: SERVING is success.
type GRPCAction struct {
	Host    string // default 127.0.0.1
	Port    int
	Service string // default "" (the server's overall health)
}

// ExecAction runs a command: exit 0 within the timeout is success.
type ExecAction struct {
	Command []string
}

// Target describes the action for logs and verbose output (which the
// health listener serves to anyone who reaches it): an HTTP probe shows as
// scheme://host:port/path, without its query, which may carry a token.
func (s Spec) Target() string {
	switch {
	case s.HTTPGet != nil:
		h := s.HTTPGet
		path, _, _ := strings.Cut(h.Path, "?")
		return fmt.Sprintf("%s://%s%s", h.Scheme, net.JoinHostPort(h.Host, strconv.Itoa(h.Port)), path)
	case s.TCPSocket != nil && s.TCPSocket.Unix != "":
		return "unix://" + s.TCPSocket.Unix
	case s.TCPSocket != nil:
		return "tcp://" + net.JoinHostPort(s.TCPSocket.Host, strconv.Itoa(s.TCPSocket.Port))
	case s.GRPC != nil:
		t := "grpc://" + net.JoinHostPort(s.GRPC.Host, strconv.Itoa(s.GRPC.Port))
		if s.GRPC.Service != "" {
			t += "/" + s.GRPC.Service
		}
		return t
	case s.Exec != nil:
		return "exec:" + strings.Join(s.Exec.Command, " ")
	}
	return "none"
}

// WithDefaults returns s with zero fields set to Kubernetes' defaults.
func (s Spec) WithDefaults() Spec {
	if s.Container == "" {
		s.Container = "app"
	}
	if s.Period == 0 {
		s.Period = DefaultPeriod
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.SuccessThreshold == 0 {
		s.SuccessThreshold = DefaultSuccessThreshold
	}
	if s.FailureThreshold == 0 {
		s.FailureThreshold = DefaultFailureThreshold
	}
	if h := s.HTTPGet; h != nil {
		c := *h
		if c.Scheme == "" {
			c.Scheme = "http"
		}
		c.Scheme = strings.ToLower(c.Scheme)
		if c.Host == "" {
			c.Host = "127.0.0.1"
		}
		if c.Path == "" {
			c.Path = "/"
		}
		s.HTTPGet = &c
	}
	if t := s.TCPSocket; t != nil && t.Host == "" {
		c := *t
		c.Host = "127.0.0.1"
		s.TCPSocket = &c
	}
	if g := s.GRPC; g != nil && g.Host == "" {
		c := *g
		c.Host = "127.0.0.1"
		s.GRPC = &c
	}
	return s
}

// Validate checks a spec (after defaults) and names the offending field.
func (s Spec) Validate() error {
	n := 0
	for _, set := range []bool{s.HTTPGet != nil, s.TCPSocket != nil, s.GRPC != nil, s.Exec != nil} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return errors.New("no action: give one of httpGet, tcpSocket, grpc or exec")
	case n > 1:
		return errors.New("more than one action: give only one of httpGet, tcpSocket, grpc or exec")
	}
	switch s.Kind {
	case Readiness, Liveness, Startup:
	default:
		return fmt.Errorf("kind %q: want readiness, liveness or startup", s.Kind)
	}
	port := func(p int) error {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d is out of range 1-65535", p)
		}
		return nil
	}
	switch {
	case s.HTTPGet != nil:
		if s.HTTPGet.Scheme != "http" && s.HTTPGet.Scheme != "https" {
			return fmt.Errorf("httpGet.scheme %q: want HTTP or HTTPS", s.HTTPGet.Scheme)
		}
		if err := port(s.HTTPGet.Port); err != nil {
			return fmt.Errorf("httpGet.%w", err)
		}
		if !strings.HasPrefix(s.HTTPGet.Path, "/") {
			path, _, _ := strings.Cut(s.HTTPGet.Path, "?") // the query may carry a token
			return fmt.Errorf("httpGet.path %q must start with /", path)
		}
	case s.TCPSocket != nil && s.TCPSocket.Unix != "":
	case s.TCPSocket != nil:
		if err := port(s.TCPSocket.Port); err != nil {
			return fmt.Errorf("tcpSocket.%w", err)
		}
	case s.GRPC != nil:
		if err := port(s.GRPC.Port); err != nil {
			return fmt.Errorf("grpc.%w", err)
		}
	case s.Exec != nil:
		if len(s.Exec.Command) == 0 || s.Exec.Command[0] == "" {
			return errors.New("exec.command is empty")
		}
	}
	if s.InitialDelay < 0 || s.Period <= 0 || s.Timeout <= 0 {
		return fmt.Errorf("initialDelaySeconds must be ≥ 0, periodSeconds and timeoutSeconds ≥ 1 (got %s, %s, %s)", s.InitialDelay, s.Period, s.Timeout)
	}
	if s.StartPeriod < 0 {
		return fmt.Errorf("start period %s is negative", s.StartPeriod)
	}
	if s.SuccessThreshold < 1 || s.FailureThreshold < 1 {
		return fmt.Errorf("successThreshold and failureThreshold must be ≥ 1 (got %d, %d)", s.SuccessThreshold, s.FailureThreshold)
	}
	if s.Kind != Readiness && s.SuccessThreshold != 1 {
		return fmt.Errorf("successThreshold is %d: it must be 1 for %s probes (as in Kubernetes)", s.SuccessThreshold, s.Kind)
	}
	return nil
}

// Outcome is one probe attempt.
type Outcome struct {
	OK     bool
	Reason string // why it failed, or a warning on success; short, for operators
	Output string // response body or command output, at most 10 KiB
}

// prober runs one attempt; ctx carries the attempt's timeout.
type prober interface {
	probe(ctx context.Context) Outcome
}

func newProber(s Spec, version string) prober {
	switch {
	case s.HTTPGet != nil:
		return newHTTPProber(s.HTTPGet, version)
	case s.TCPSocket != nil && s.TCPSocket.Unix != "":
		return tcpProber{network: "unix", addr: s.TCPSocket.Unix}
	case s.TCPSocket != nil:
		return tcpProber{network: "tcp", addr: net.JoinHostPort(s.TCPSocket.Host, strconv.Itoa(s.TCPSocket.Port))}
	case s.GRPC != nil:
		return grpcProber{addr: net.JoinHostPort(s.GRPC.Host, strconv.Itoa(s.GRPC.Port)), service: s.GRPC.Service, version: version}
	default:
		return execProber{argv: s.Exec.Command}
	}
}

type httpProber struct {
	url    string
	header http.Header
	client *http.Client
}

func newHTTPProber(a *HTTPGetAction, version string) httpProber {
	u := url.URL{Scheme: a.Scheme, Host: net.JoinHostPort(a.Host, strconv.Itoa(a.Port))}
	path, query, _ := strings.Cut(a.Path, "?")
	u.Path, u.RawQuery = path, query
	hdr := a.Headers.Clone()
	if hdr == nil {
		hdr = http.Header{}
	}
	if hdr.Get("User-Agent") == "" {
		hdr.Set("User-Agent", probeUserAgent+version)
	}
	if hdr.Get("Accept") == "" {
		hdr.Set("Accept", "*/*")
	}
	origHost := u.Hostname()
	return httpProber{url: u.String(), header: hdr, client: &http.Client{
		Transport: &http.Transport{
			Proxy:              nil,
			DisableKeepAlives:  true, // a new connection per probe, as the kubelet
			DisableCompression: true,
			TLSClientConfig:    &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // kubelet semantics: HTTPS probes do not verify
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return fmt.Errorf("stopped after %d redirects", maxRedirects)
			}
			if req.URL.Hostname() != origHost {
				return http.ErrUseLastResponse // another host: the 3xx itself is the answer
			}
			return nil
		},
	}}
}

func (p httpProber) probe(ctx context.Context) Outcome {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return Outcome{Reason: err.Error()}
	}
	req.Header = p.header.Clone()
	if h := req.Header.Get("Host"); h != "" {
		req.Host = h
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return Outcome{Reason: "timeout"}
		}
		return Outcome{Reason: shortNetErr(err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
	out := Outcome{Output: string(body)}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		out.OK = true
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		out.OK, out.Reason = true, fmt.Sprintf("HTTP %d (redirect not followed)", resp.StatusCode)
	default:
		out.Reason = fmt.Sprintf("HTTP %d", resp.StatusCode)
	}
	return out
}

type tcpProber struct{ network, addr string }

func (p tcpProber) probe(ctx context.Context) Outcome {
	var d net.Dialer
	c, err := d.DialContext(ctx, p.network, p.addr)
	if err != nil {
		if ctx.Err() != nil {
			return Outcome{Reason: "timeout"}
		}
		return Outcome{Reason: shortNetErr(err)}
	}
	_ = c.Close()
	return Outcome{OK: true}
}

type grpcProber struct {
	addr, service, version string
}

func (p grpcProber) probe(ctx context.Context) Outcome {
	conn, err := grpc.NewClient(p.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent(probeUserAgent+p.version))
	if err != nil {
		return Outcome{Reason: err.Error()}
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: p.service})
	if err != nil {
		if ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded {
			return Outcome{Reason: "timeout"}
		}
		st := status.Convert(err)
		return Outcome{Reason: fmt.Sprintf("gRPC %s: %s", st.Code(), st.Message())}
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return Outcome{Reason: "gRPC status " + s.String()}
	}
	return Outcome{OK: true}
}

type execProber struct{ argv []string }

func (p execProber) probe(ctx context.Context) Outcome {
	cmd := exec.CommandContext(ctx, p.argv[0], p.argv[1:]...)
	var out capped
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 100 * time.Millisecond
	err := cmd.Run()
	o := Outcome{Output: out.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
		o.OK = true
	case ctx.Err() != nil:
		o.Reason = "timeout: command killed"
	case errors.As(err, &ee):
		o.Reason = fmt.Sprintf("exit code %d", ee.ExitCode())
	default:
		o.Reason = err.Error()
	}
	return o
}

// capped keeps the first 10 KiB written to it.
type capped struct{ b bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxBodyBytes - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *capped) String() string { return c.b.String() }

// shortNetErr keeps the operator-relevant tail of a network error
// ("connection refused", "no such host").
func shortNetErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // not its URL: the query may carry a token
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		msg := op.Err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return op.Op + ": " + msg
	}
	return err.Error()
}
