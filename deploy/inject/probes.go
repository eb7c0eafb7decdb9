package inject

import (
	"encoding/json"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// appProbes is one entry of TIDEGATE_APP_PROBES, in the schema of
// tidegate's YAML probes: list (a container's probes as Kubernetes writes
// them, every port a number).
type appProbes struct {
	Container      string    `json:"container"`
	ReadinessProbe *appProbe `json:"readinessProbe,omitempty"`
	LivenessProbe  *appProbe `json:"livenessProbe,omitempty"`
	StartupProbe   *appProbe `json:"startupProbe,omitempty"`
}

// appProbe is a probe as tidegate runs it: Kubernetes' fields, minus what
// only the kubelet uses (terminationGracePeriodSeconds).
type appProbe struct {
	HTTPGet             *appHTTPGet   `json:"httpGet,omitempty"`
	TCPSocket           *appTCPSocket `json:"tcpSocket,omitempty"`
	GRPC                *appGRPC      `json:"grpc,omitempty"`
	InitialDelaySeconds int32         `json:"initialDelaySeconds,omitempty"`
	TimeoutSeconds      int32         `json:"timeoutSeconds,omitempty"`
	PeriodSeconds       int32         `json:"periodSeconds,omitempty"`
	SuccessThreshold    int32         `json:"successThreshold,omitempty"`
	FailureThreshold    int32         `json:"failureThreshold,omitempty"`
}

type appHTTPGet struct {
	Path        string              `json:"path,omitempty"`
	Port        int                 `json:"port"`
	Host        string              `json:"host,omitempty"`
	Scheme      string              `json:"scheme,omitempty"`
	HTTPHeaders []corev1.HTTPHeader `json:"httpHeaders,omitempty"`
}

type appTCPSocket struct {
	Port int    `json:"port"`
	Host string `json:"host,omitempty"`
}

type appGRPC struct {
	Port    int     `json:"port"`
	Service *string `json:"service,omitempty"`
}

// probeKinds are the three probes of a container, with the path tidegate
// serves each verdict on.
type probeKind struct {
	name    string // the field: readinessProbe, …
	verdict string // readyz, livez, startupz
	get     func(c *corev1.Container) **corev1.Probe
}

func probeKinds() []probeKind {
	return []probeKind{
		{"readinessProbe", "readyz", func(c *corev1.Container) **corev1.Probe { return &c.ReadinessProbe }},
		{"livenessProbe", "livez", func(c *corev1.Container) **corev1.Probe { return &c.LivenessProbe }},
		{"startupProbe", "startupz", func(c *corev1.Container) **corev1.Probe { return &c.StartupProbe }},
	}
}

func findProbeKind(name string) (probeKind, bool) {
	for _, k := range probeKinds() {
		if k.name == name {
			return k, true
		}
	}
	return probeKind{}, false
}

// moveProbes points every httpGet, tcpSocket and grpc probe of every
// regular container at the sidecar's /app-health/<container>/<verdict>,
// and returns the originals for TIDEGATE_APP_PROBES (named ports resolved)
// and for the status record (as they were).
func (in *podInjection) moveProbes(p Params) (string, []probeRecord, error) {
	var moved []appProbes
	var records []probeRecord
	for i := range in.spec.Containers {
		c := &in.spec.Containers[i]
		entry := appProbes{Container: c.Name}
		found := false
		for _, k := range probeKinds() {
			pp := k.get(c)
			orig := *pp
			if orig == nil || (orig.HTTPGet == nil && orig.TCPSocket == nil && orig.GRPC == nil) {
				continue
			}
			ap, err := in.appProbe(c, k.name, orig)
			if err != nil {
				return "", nil, err
			}
			if err := in.checkProbePort(p, c, k.name, ap); err != nil {
				return "", nil, err
			}
			switch k.name {
			case "readinessProbe":
				entry.ReadinessProbe = ap
			case "livenessProbe":
				entry.LivenessProbe = ap
			default:
				entry.StartupProbe = ap
			}
			found = true
			records = append(records, probeRecord{Container: c.Name, Probe: k.name, Was: orig.DeepCopy()})
			rewritten := orig.DeepCopy()
			rewritten.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/app-health/" + c.Name + "/" + k.verdict,
				Port: intstr.FromInt32(p.HealthPort),
			}}
			if k.name != "startupProbe" {
				// tidegate counts the original thresholds; the kubelet
				// follows its verdict at once.
				rewritten.SuccessThreshold, rewritten.FailureThreshold = 1, 1
			}
			*pp = rewritten
		}
		if found {
			moved = append(moved, entry)
		}
	}
	if len(moved) == 0 {
		return "", records, nil
	}
	b, err := json.Marshal(moved)
	if err != nil {
		return "", nil, in.errorf("", "%s: %v", AppProbesEnv, err)
	}
	return string(b), records, nil
}

// appProbe is probe as tidegate runs it, its named port resolved against
// container c's ports.
func (in *podInjection) appProbe(c *corev1.Container, kind string, probe *corev1.Probe) (*appProbe, error) {
	ap := &appProbe{InitialDelaySeconds: probe.InitialDelaySeconds, TimeoutSeconds: probe.TimeoutSeconds,
		PeriodSeconds: probe.PeriodSeconds, SuccessThreshold: probe.SuccessThreshold, FailureThreshold: probe.FailureThreshold}
	field := containerField(false, c.Name) + "." + kind
	switch {
	case probe.HTTPGet != nil:
		h := probe.HTTPGet
		port, err := in.resolvePort(c, h.Port, field+".httpGet.port")
		if err != nil {
			return nil, err
		}
		ap.HTTPGet = &appHTTPGet{Path: h.Path, Port: port, Host: h.Host, Scheme: string(h.Scheme), HTTPHeaders: h.HTTPHeaders}
	case probe.TCPSocket != nil:
		port, err := in.resolvePort(c, probe.TCPSocket.Port, field+".tcpSocket.port")
		if err != nil {
			return nil, err
		}
		ap.TCPSocket = &appTCPSocket{Port: port, Host: probe.TCPSocket.Host}
	default:
		g := probe.GRPC
		if g.Port < 1 || g.Port > 65535 {
			return nil, in.errorf(field+".grpc.port", "%d is not a port: write 1-65535", g.Port)
		}
		ap.GRPC = &appGRPC{Port: int(g.Port), Service: g.Service}
	}
	return ap, nil
}

// resolvePort is port as a number: a number as it is, a name looked up in
// c's ports (named ports resolve only within their own container).
func (in *podInjection) resolvePort(c *corev1.Container, port intstr.IntOrString, field string) (int, error) {
	if port.Type == intstr.Int {
		if port.IntVal < 1 || port.IntVal > 65535 {
			return 0, in.errorf(field, "%d is not a port: write 1-65535 or the name of a port of container %s", port.IntVal, c.Name)
		}
		return int(port.IntVal), nil
	}
	for _, pt := range c.Ports {
		if pt.Name == port.StrVal && port.StrVal != "" {
			return int(pt.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil && n >= 1 && n <= 65535 {
		return n, nil
	}
	return 0, in.errorf(field, "port %q is not a port of container %s (its ports: %s): name one of them or write the number", port.StrVal, c.Name, formatPorts(c))
}

// checkProbePort fails when a probe that tidegate would run targets one of
// tidegate's own ports on the pod's address: the app cannot listen there
// (the sidecar binds it), and tidegate would probe itself.
func (in *podInjection) checkProbePort(p Params, c *corev1.Container, kind string, ap *appProbe) error {
	port, host, field := 0, "", containerField(false, c.Name)+"."+kind
	switch {
	case ap.HTTPGet != nil:
		port, host, field = ap.HTTPGet.Port, ap.HTTPGet.Host, field+".httpGet.port"
	case ap.TCPSocket != nil:
		port, host, field = ap.TCPSocket.Port, ap.TCPSocket.Host, field+".tcpSocket.port"
	case ap.GRPC != nil:
		port, field = ap.GRPC.Port, field+".grpc.port"
	}
	if host != "" {
		return nil // another address: not the pod's ports
	}
	for _, own := range []struct {
		what string
		n    int32
	}{{"listen", p.ListenPort}, {"health", p.HealthPort}, {"metrics", p.MetricsPort}, {"admin", p.AdminPort}} {
		if port == int(own.n) {
			return in.errorf(field, "port %d is tidegate's %s port (containers share the pod's network): probe the port the container listens on, or run the injector with other ports", port, own.what)
		}
	}
	return nil
}
