package inject

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Annotations a pod (or a pod template) carries to ask for injection and
// tune it. Each value is checked; a bad one is an error naming it.
const (
	// AnnotationInject is "true" to ask for injection, "false" to refuse it
	// (even in a namespace labelled tidegate.io/inject=enabled).
	AnnotationInject = "tidegate.io/inject"
	// AnnotationMode is "native" (default: an init container with
	// restartPolicy Always) or "classic" (a second container).
	AnnotationMode = "tidegate.io/mode"
	// AnnotationAppContainer names the container tidegate fronts. Default:
	// kubectl.kubernetes.io/default-container, else the first container.
	AnnotationAppContainer = "tidegate.io/app-container"
	// AnnotationAppPort is the app container's port tidegate fronts, by name
	// or number. Default: the port named "http", else the only TCP port.
	AnnotationAppPort = "tidegate.io/app-port"
	// AnnotationProtocol is "http" (default: HTTP/1.1, h2c, gRPC, WebSocket)
	// or "tcp" (raw bytes).
	AnnotationProtocol = "tidegate.io/protocol"
	// AnnotationDrainDelay, AnnotationDrainTimeout and
	// AnnotationAppStopTimeout are Go durations ("5s") that override
	// Params.DrainDelay, Params.DrainTimeout and Params.AppStopTimeout.
	AnnotationDrainDelay     = "tidegate.io/drain-delay"
	AnnotationDrainTimeout   = "tidegate.io/drain-timeout"
	AnnotationAppStopTimeout = "tidegate.io/app-stop-timeout"
	// AnnotationImage overrides Params.Image.
	AnnotationImage = "tidegate.io/image"
	// AnnotationCPURequest, AnnotationMemoryRequest, AnnotationCPULimit and
	// AnnotationMemoryLimit are Kubernetes quantities ("50m", "64Mi") that
	// override the sidecar's resources; "0" removes a limit.
	AnnotationCPURequest    = "tidegate.io/cpu-request"
	AnnotationMemoryRequest = "tidegate.io/memory-request"
	AnnotationCPULimit      = "tidegate.io/cpu-limit"
	AnnotationMemoryLimit   = "tidegate.io/memory-limit"
	// AnnotationStatus is written by Inject: a JSON record of everything it
	// changed, which Uninject reads to give back the original. Its presence
	// means "already injected".
	AnnotationStatus = "tidegate.io/status"
	// LabelNamespace is the namespace label "enabled" (inject every pod that
	// does not refuse) or "disabled" (the webhook is never called).
	LabelNamespace = "tidegate.io/inject"
)

// Names the injected pod uses. Port names are at most 15 characters.
const (
	SidecarName     = "tidegate"        // the sidecar container
	AppPortName     = "tidegate-app"    // the app's port, renamed
	HealthPortName  = "tidegate-health" // the sidecar's health port
	MetricsPortName = "tidegate-prom"   // the sidecar's metrics port
	// UnnamedPortName is the sidecar's public port name when the app's port
	// has no name (a Service must then target this name: docs/kubernetes.md).
	UnnamedPortName = "tidegate-http"
	BinVolume       = "tidegate-bin" // emptyDir for the chained preStop hook
	BinDir          = "/tidegate-bin"
	// TokenFileName is the file in BinDir where the sidecar writes the
	// drain token for the chained hook (tidegate prestop --token-file), so
	// that the token is not in the hook's command line, which the kubelet
	// prints in events when a hook fails.
	TokenFileName = "drain-token"
	// DrainTokenHeader is the header of GET /drain (cmd/tidegate checks it;
	// a test there keeps the two equal).
	DrainTokenHeader = "X-Tidegate-Drain-Token"
	// AppProbesEnv holds the app containers' original probes as JSON, in the
	// schema of tidegate's YAML probes: list.
	AppProbesEnv = "TIDEGATE_APP_PROBES"
	// DrainTokenEnv holds the drain token in the sidecar.
	DrainTokenEnv = "TIDEGATE_DRAIN_TOKEN"
)

// Mode is how the sidecar is added.
type Mode string

const (
	// Native adds the sidecar as an init container with restartPolicy
	// Always (Kubernetes 1.29+): it starts before the app and is stopped
	// after it, and a Job completes when its app containers do.
	Native Mode = "native"
	// Classic adds the sidecar as a second container.
	Classic Mode = "classic"
)

// Params are the injection's defaults; pod annotations override most of
// them. The zero value is usable: every zero field takes the default shown.
type Params struct {
	// Image is the sidecar image. Default DefaultImage.
	Image string
	// Mode is Native or Classic. Default Native.
	Mode Mode
	// ListenPort is the sidecar's public port (the app port's name moves
	// here). Default 15080.
	ListenPort int32
	// HealthPort serves /readyz, /livez, /startupz, /app-health/… and GET
	// /drain. Default 15081.
	HealthPort int32
	// MetricsPort serves only GET /metrics, on the pod network, for
	// Prometheus. Default 15092 (not 15090: that is Envoy's, in every
	// Istio pod).
	MetricsPort int32
	// AdminPort is the admin listener, on 127.0.0.1 only. Default 15901.
	AdminPort int32
	// DrainDelay is tidegate's --drain-delay. Default 5s.
	DrainDelay time.Duration
	// DrainTimeout is tidegate's --drain-timeout; the preStop hook waits
	// DrainTimeout + 5s. Default 30s.
	DrainTimeout time.Duration
	// AppStopTimeout is how long the app takes to stop after SIGTERM, for
	// terminationGracePeriodSeconds. Default 10s.
	AppStopTimeout time.Duration
	// Resources are the sidecar's requests and limits. Default: requests
	// cpu 50m, memory 32Mi; limit memory 128Mi; no CPU limit.
	Resources *corev1.ResourceRequirements
	// Token returns a new drain token for each injection. Default: 16
	// random bytes from crypto/rand, hex-encoded. Tests pass a fixed one.
	Token func() (string, error)
}

// DefaultImage is the sidecar image when Params.Image is empty.
const DefaultImage = "ghcr.io/tidegate/tidegate:latest"

// graceMargin is added to drain timeout + app stop timeout for
// terminationGracePeriodSeconds; preStopSlack is added to the drain timeout
// for the preStop hook's wait.
const (
	graceMargin  = 5 * time.Second
	preStopSlack = 5 * time.Second
)

// WithDefaults returns p with every zero field set to its default.
func (p Params) WithDefaults() Params {
	if p.Image == "" {
		p.Image = DefaultImage
	}
	if p.Mode == "" {
		p.Mode = Native
	}
	if p.ListenPort == 0 {
		p.ListenPort = 15080
	}
	if p.HealthPort == 0 {
		p.HealthPort = 15081
	}
	if p.MetricsPort == 0 {
		p.MetricsPort = 15092
	}
	if p.AdminPort == 0 {
		p.AdminPort = 15901
	}
	if p.DrainDelay == 0 {
		p.DrainDelay = 5 * time.Second
	}
	if p.DrainTimeout == 0 {
		p.DrainTimeout = 30 * time.Second
	}
	if p.AppStopTimeout == 0 {
		p.AppStopTimeout = 10 * time.Second
	}
	if p.Resources == nil {
		p.Resources = &corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("50m"),
				corev1.ResourceMemory: resource.MustParse("32Mi"),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
		}
	}
	if p.Token == nil {
		p.Token = randomToken
	}
	return p
}

// Validate reports the first bad field of p (after WithDefaults).
func (p Params) Validate() error {
	if p.Mode != Native && p.Mode != Classic {
		return fmt.Errorf("mode %q: want native or classic", p.Mode)
	}
	ports := map[int32]string{}
	for _, pp := range []struct {
		name string
		v    int32
	}{{"listen port", p.ListenPort}, {"health port", p.HealthPort}, {"metrics port", p.MetricsPort}, {"admin port", p.AdminPort}} {
		if pp.v < 1 || pp.v > 65535 {
			return fmt.Errorf("%s %d: want 1-65535", pp.name, pp.v)
		}
		if other, dup := ports[pp.v]; dup {
			return fmt.Errorf("%s %d is also the %s: give each its own port", pp.name, pp.v, other)
		}
		ports[pp.v] = pp.name
	}
	if p.DrainDelay < 0 || p.DrainTimeout <= 0 || p.AppStopTimeout < 0 {
		return fmt.Errorf("drain delay %s, drain timeout %s, app stop timeout %s: want durations ≥ 0 (the timeout > 0)", p.DrainDelay, p.DrainTimeout, p.AppStopTimeout)
	}
	if p.DrainDelay >= p.DrainTimeout {
		return fmt.Errorf("drain delay %s is not below the drain timeout %s: the drain would be cut before it closes a listener", p.DrainDelay, p.DrainTimeout)
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("drain token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
