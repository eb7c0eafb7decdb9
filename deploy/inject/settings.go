package inject

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// annotationPrefix marks the annotations this package reads and writes.
const annotationPrefix = "tidegate.io/"

// knownAnnotations are every tidegate.io/ annotation a pod may carry; any
// other is a typo and an error.
func knownAnnotations() []string {
	return []string{AnnotationInject, AnnotationMode, AnnotationAppContainer, AnnotationAppPort,
		AnnotationProtocol, AnnotationDrainDelay, AnnotationDrainTimeout, AnnotationAppStopTimeout,
		AnnotationImage, AnnotationCPURequest, AnnotationMemoryRequest, AnnotationCPULimit,
		AnnotationMemoryLimit, AnnotationStatus}
}

// settings are one pod's parameters: Params with the pod's annotations
// applied, and the choices only annotations make.
type settings struct {
	p            Params
	protocol     string // "http" or "tcp"
	appContainer string // tidegate.io/app-container, "" when absent
	appPort      string // tidegate.io/app-port, "" when absent
}

func annotationField(key string) string { return "metadata.annotations[" + key + "]" }

// readSettings applies the pod's annotations to p (already defaulted and
// validated) and checks every tidegate.io/ annotation.
func (in *podInjection) readSettings(p Params) (settings, error) {
	ann := in.meta.Annotations
	s := settings{p: p, protocol: "http"}
	keys := make([]string, 0, len(ann))
	for k := range ann {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if strings.HasPrefix(k, annotationPrefix) && !slices.Contains(knownAnnotations(), k) {
			return s, in.errorf(annotationField(k), "tidegate reads no annotation %q: the ones it reads are %s",
				k, strings.Join(knownAnnotations(), ", "))
		}
	}
	if v, ok := ann[AnnotationMode]; ok {
		if Mode(v) != Native && Mode(v) != Classic {
			return s, in.errorf(annotationField(AnnotationMode), "%q is not a mode: write %q (an init container with restartPolicy Always, Kubernetes 1.29+) or %q (a second container)", v, Native, Classic)
		}
		s.p.Mode = Mode(v)
	}
	if v, ok := ann[AnnotationProtocol]; ok {
		if v != "http" && v != "tcp" {
			return s, in.errorf(annotationField(AnnotationProtocol), "%q is not a protocol: write \"http\" (HTTP/1.1, h2c, gRPC, WebSocket) or \"tcp\" (raw bytes)", v)
		}
		s.protocol = v
	}
	if v, ok := ann[AnnotationImage]; ok {
		if v == "" || strings.ContainsAny(v, " \t\n\"'") {
			return s, in.errorf(annotationField(AnnotationImage), "%q is not an image reference: write one like %s, or remove the annotation for the default", v, DefaultImage)
		}
		s.p.Image = v
	}
	if v, ok := ann[AnnotationAppContainer]; ok {
		if v == "" {
			return s, in.errorf(annotationField(AnnotationAppContainer), "empty: write the name of the container tidegate fronts, or remove the annotation for the first container")
		}
		s.appContainer = v
	}
	if v, ok := ann[AnnotationAppPort]; ok {
		if v == "" {
			return s, in.errorf(annotationField(AnnotationAppPort), "empty: write the name or number of the app container's port tidegate fronts")
		}
		s.appPort = v
	}
	for _, d := range []struct {
		key  string
		dst  *time.Duration
		zero bool // zero allowed
	}{{AnnotationDrainDelay, &s.p.DrainDelay, true}, {AnnotationDrainTimeout, &s.p.DrainTimeout, false}, {AnnotationAppStopTimeout, &s.p.AppStopTimeout, true}} {
		v, ok := ann[d.key]
		if !ok {
			continue
		}
		dur, err := time.ParseDuration(v)
		if err != nil || dur < 0 || (dur == 0 && !d.zero) {
			want := "a duration ≥ 0"
			if !d.zero {
				want = "a duration > 0"
			}
			return s, in.errorf(annotationField(d.key), "%q is not %s: write a Go duration like \"5s\" or \"1m30s\"", v, want)
		}
		*d.dst = dur
	}
	if s.p.DrainDelay >= s.p.DrainTimeout {
		key := AnnotationDrainDelay
		if _, ok := ann[key]; !ok {
			key = AnnotationDrainTimeout
		}
		return s, in.errorf(annotationField(key), "drain delay %s is not below the drain timeout %s: the drain would be cut before it closes a listener; make %s shorter than %s",
			s.p.DrainDelay, s.p.DrainTimeout, AnnotationDrainDelay, AnnotationDrainTimeout)
	}
	res, err := in.readResources(s.p.Resources)
	if err != nil {
		return s, err
	}
	s.p.Resources = res
	return s, nil
}

// readResources returns a copy of base with the resource annotations
// applied: a quantity sets the value, "0" removes it.
func (in *podInjection) readResources(base *corev1.ResourceRequirements) (*corev1.ResourceRequirements, error) {
	res := base.DeepCopy()
	ann := in.meta.Annotations
	for _, r := range []struct {
		key  string
		list *corev1.ResourceList
		name corev1.ResourceName
	}{{AnnotationCPURequest, &res.Requests, corev1.ResourceCPU}, {AnnotationMemoryRequest, &res.Requests, corev1.ResourceMemory},
		{AnnotationCPULimit, &res.Limits, corev1.ResourceCPU}, {AnnotationMemoryLimit, &res.Limits, corev1.ResourceMemory}} {
		v, ok := ann[r.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() < 0 {
			return nil, in.errorf(annotationField(r.key), "%q is not a quantity ≥ 0: write one like \"50m\" (CPU) or \"64Mi\" (memory), or \"0\" to remove it", v)
		}
		if q.IsZero() {
			delete(*r.list, r.name)
			continue
		}
		if *r.list == nil {
			*r.list = corev1.ResourceList{}
		}
		(*r.list)[r.name] = q
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := res.Requests[name]
		lim, hasLim := res.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return nil, in.errorf(annotationField(annotationPrefix+string(name)+"-request"), "%s request %s is above its limit %s: Kubernetes rejects that; lower the request or raise %s%s-limit",
				name, req.String(), lim.String(), annotationPrefix, name)
		}
	}
	if len(res.Requests) == 0 {
		res.Requests = nil
	}
	if len(res.Limits) == 0 {
		res.Limits = nil
	}
	return res, nil
}

// formatPorts lists a container's ports for an error message:
// "http 8080/TCP, 9090/TCP".
func formatPorts(c *corev1.Container) string {
	if len(c.Ports) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(c.Ports))
	for _, pt := range c.Ports {
		proto := pt.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		s := strconv.Itoa(int(pt.ContainerPort)) + "/" + string(proto)
		if pt.Name != "" {
			s = pt.Name + " " + s
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// seconds formats a whole number of seconds as a duration flag value,
// saturating at the longest time.Duration (about 292 years): a preStop
// sleep may be as long as terminationGracePeriodSeconds, an int64, and a
// wrapped, negative value would make `tidegate prestop` refuse its
// arguments and skip the drain.
func seconds(n int64) string {
	n = min(n, int64(math.MaxInt64/time.Second))
	return (time.Duration(n) * time.Second).String()
}

// ceilSeconds is d in whole seconds, rounded up.
func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
