package inject

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podInjection is one call of InjectPod or UninjectPod: the pod being
// changed (copies, written back only on success) and how errors name it.
type podInjection struct {
	meta     *metav1.ObjectMeta
	spec     *corev1.PodSpec
	object   string
	explicit bool
	warnings []string
}

func newPodInjection(meta *metav1.ObjectMeta, spec *corev1.PodSpec) *podInjection {
	in := &podInjection{meta: meta.DeepCopy(), spec: spec.DeepCopy(), object: objectName("Pod", meta)}
	for k := range meta.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			in.explicit = true
		}
	}
	return in
}

func (in *podInjection) errorf(field, format string, a ...any) *Error {
	return &Error{Object: in.object, Field: field, Msg: fmt.Sprintf(format, a...), Explicit: in.explicit}
}

// objectName is "Kind namespace/name", generateName standing in for a
// missing name, and without "namespace/" when there is none.
func objectName(kind string, meta *metav1.ObjectMeta) string {
	name := meta.Name
	if name == "" {
		name = meta.GenerateName
	}
	if meta.Namespace != "" {
		name = meta.Namespace + "/" + name
	}
	if name == "" {
		return kind
	}
	return kind + " " + name
}

func containerField(init bool, name string) string {
	if init {
		return "spec.initContainers[" + name + "]"
	}
	return "spec.containers[" + name + "]"
}

// InjectPod adds the tidegate sidecar to the pod (or pod template) meta and
// spec, in place, as the package comment describes. policy and the pod's
// tidegate.io/inject annotation decide whether it does; Result.Skipped says
// why it did not. p's zero fields take their defaults. On error meta and
// spec are unchanged and the error is an *Error whose Object is "Pod name"
// and whose Field is relative to the pod ("spec.containers[app].ports").
func InjectPod(meta *metav1.ObjectMeta, spec *corev1.PodSpec, policy Policy, p Params) (Result, error) {
	if meta == nil || spec == nil {
		return Result{}, &Error{Object: "Pod", Msg: "no metadata or spec: give both"}
	}
	in := newPodInjection(meta, spec)
	if _, ok := meta.Annotations[AnnotationStatus]; ok {
		return Result{Skipped: SkipAlreadyInjected}, nil
	}
	if policy != InjectUnlessRefused && policy != InjectIfAsked {
		return Result{}, in.errorf("", "policy %d: want InjectUnlessRefused or InjectIfAsked", policy)
	}
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return Result{}, in.errorf("", "the injector's parameters: %v", err)
	}
	switch v, ok := meta.Annotations[AnnotationInject]; {
	case ok && v == "false":
		return Result{Skipped: SkipRefused}, nil
	case ok && v != "true":
		return Result{}, in.errorf(annotationField(AnnotationInject), "%q: write \"true\" to inject tidegate or \"false\" to refuse it", v)
	case !ok && policy == InjectIfAsked:
		return Result{Skipped: SkipNotAsked}, nil
	}
	if err := in.inject(p); err != nil {
		return Result{}, err
	}
	*meta, *spec = *in.meta, *in.spec
	return Result{Injected: true, Warnings: in.warnings}, nil
}

// inject does InjectPod's work on in's copies.
func (in *podInjection) inject(p Params) error {
	for i := range in.spec.InitContainers {
		if in.spec.InitContainers[i].Name == SidecarName {
			return in.errorf(containerField(true, SidecarName), "a container named %s is already there, without the %s annotation injection writes: remove it and inject again, or annotate the pod %s: \"false\" to keep a hand-made sidecar", SidecarName, AnnotationStatus, AnnotationInject)
		}
	}
	for i := range in.spec.Containers {
		if in.spec.Containers[i].Name == SidecarName {
			return in.errorf(containerField(false, SidecarName), "a container named %s is already there, without the %s annotation injection writes: remove it and inject again, or annotate the pod %s: \"false\" to keep a hand-made sidecar", SidecarName, AnnotationStatus, AnnotationInject)
		}
	}
	if err := in.checkPodKind(); err != nil {
		return err
	}
	s, err := in.readSettings(p)
	if err != nil {
		return err
	}
	p = s.p
	app, err := in.appContainer(s.appContainer)
	if err != nil {
		return err
	}
	c := &in.spec.Containers[app]
	port, err := in.appPort(c, s.appPort)
	if err != nil {
		return err
	}
	publicName := c.Ports[port].Name
	if publicName == "" {
		publicName = UnnamedPortName
	}
	if err := in.checkCollisions(p, app, port, publicName); err != nil {
		return err
	}
	token, err := p.Token()
	if err != nil {
		return in.errorf("", "the injector's parameters: drain token: %v", err)
	}
	st := status{Version: statusVersion, Mode: p.Mode, AppContainer: c.Name, Lifecycle: c.Lifecycle.DeepCopy()}

	probes, records, err := in.moveProbes(p)
	if err != nil {
		return err
	}
	st.Probes = records

	chained, err := in.pairPreStop(p, c, c.Ports[port].Name, token) // before the rename: it resolves named ports
	if err != nil {
		return err
	}
	if c.Ports[port].Name != "" {
		st.AppPort = &portRecord{Index: port, Name: c.Ports[port].Name}
		c.Ports[port].Name = AppPortName
	}
	sc := sidecar(p, s.protocol, int(c.Ports[port].ContainerPort), publicName, token, probes, chained)
	if chained {
		st.BinVolume = true
		if err := in.addBinVolume(c); err != nil {
			return err
		}
	}
	if p.Mode == Native {
		in.spec.InitContainers = append(in.spec.InitContainers, sc)
	} else {
		in.spec.Containers = append(in.spec.Containers, sc)
		if rp := in.spec.RestartPolicy; rp == corev1.RestartPolicyNever || rp == corev1.RestartPolicyOnFailure {
			in.warnings = append(in.warnings, fmt.Sprintf("classic sidecar in a pod with restartPolicy %s: the pod does not complete while tidegate runs; use mode %s (Kubernetes 1.29+)", rp, Native))
		}
	}
	st.Grace = in.raiseGrace(p)
	st.Annotations = in.annotate(p, c.Name)
	rec, err := json.Marshal(st)
	if err != nil {
		return in.errorf("", "status record: %v", err)
	}
	in.meta.Annotations[AnnotationStatus] = string(rec)
	return in.checkAnnotationsSize()
}

// checkPodKind refuses the pods the sidecar cannot run in. A hostNetwork
// pod would bind tidegate's ports on the node (every other injected
// hostNetwork pod on that node collides with it) and expose its health and
// metrics listeners, and the admin one on the node's loopback, to the
// node. A Windows pod cannot run the Linux sidecar image, and the API
// server rejects the sidecar's Linux securityContext in it.
func (in *podInjection) checkPodKind() error {
	if in.spec.HostNetwork {
		return in.errorf("spec.hostNetwork", "true: tidegate's ports (%s) would be bound on the node, where every other injected hostNetwork pod collides with them and the node reaches the drain and admin endpoints; annotate the pod %s: \"false\"", "listen, health, metrics, admin", AnnotationInject)
	}
	if in.spec.OS != nil && in.spec.OS.Name == corev1.Windows {
		return in.errorf("spec.os.name", "%s: the tidegate sidecar is a Linux container (and the API server refuses its Linux securityContext in a Windows pod); annotate the pod %s: \"false\"", in.spec.OS.Name, AnnotationInject)
	}
	return nil
}

// maxAnnotationsBytes is the API server's bound on a pod's annotations,
// keys and values together (apimachinery's TotalAnnotationSizeLimitB).
const maxAnnotationsBytes = 256 << 10

// checkAnnotationsSize fails when the annotations, with the status record
// that holds the original probes and hooks, exceed what the API server
// accepts: the injected pod would be refused as a whole.
func (in *podInjection) checkAnnotationsSize() error {
	n := 0
	for k, v := range in.meta.Annotations {
		n += len(k) + len(v)
	}
	if n > maxAnnotationsBytes {
		return in.errorf(annotationField(AnnotationStatus), "the pod's annotations would be %d bytes with the record injection keeps of the original probes and hooks (%d bytes), over the %d bytes the API server accepts: shorten the probes' headers, the hooks or the other annotations, or annotate the pod %s: \"false\"",
			n, len(in.meta.Annotations[AnnotationStatus]), maxAnnotationsBytes, AnnotationInject)
	}
	return nil
}

// appContainer is the index of the container tidegate fronts: the one
// tidegate.io/app-container names, else the one
// kubectl.kubernetes.io/default-container names, else the first.
func (in *podInjection) appContainer(want string) (int, error) {
	cs := in.spec.Containers
	if len(cs) == 0 {
		return 0, in.errorf("spec.containers", "no containers: a pod needs at least one, the app tidegate fronts")
	}
	if want != "" {
		for i := range cs {
			if cs[i].Name == want {
				return i, nil
			}
		}
		names := make([]string, len(cs))
		for i := range cs {
			names[i] = cs[i].Name
		}
		return 0, in.errorf(annotationField(AnnotationAppContainer), "no container %q (the pod's containers: %s): write one of them", want, strings.Join(names, ", "))
	}
	if dc, ok := in.meta.Annotations[defaultContainerAnnotation]; ok {
		for i := range cs {
			if cs[i].Name == dc {
				return i, nil
			}
		}
	}
	return 0, nil
}

// defaultContainerAnnotation is kubectl's: the container logs and exec pick.
const defaultContainerAnnotation = "kubectl.kubernetes.io/default-container"

func isTCP(pt corev1.ContainerPort) bool {
	return pt.Protocol == "" || pt.Protocol == corev1.ProtocolTCP
}

// appPort is the index in c.Ports of the port tidegate fronts: the one
// tidegate.io/app-port names (by name or number), else the TCP port named
// "http", else the only TCP port.
func (in *podInjection) appPort(c *corev1.Container, want string) (int, error) {
	field := containerField(false, c.Name) + ".ports"
	if want != "" {
		n, numErr := strconv.Atoi(want)
		for i, pt := range c.Ports {
			if (numErr == nil && int(pt.ContainerPort) == n) || (numErr != nil && pt.Name == want) {
				if !isTCP(pt) {
					return 0, in.errorf(annotationField(AnnotationAppPort), "port %s of container %s is %s: tidegate fronts TCP; write a TCP port (its ports: %s)", want, c.Name, pt.Protocol, formatPorts(c))
				}
				return i, nil
			}
		}
		return 0, in.errorf(annotationField(AnnotationAppPort), "container %s has no port %s (its ports: %s): write one of them, or declare the app's port in %s", c.Name, strconv.Quote(want), formatPorts(c), field)
	}
	tcp := []int{}
	for i, pt := range c.Ports {
		if !isTCP(pt) {
			continue
		}
		if pt.Name == "http" {
			return i, nil
		}
		tcp = append(tcp, i)
	}
	switch len(tcp) {
	case 1:
		return tcp[0], nil
	case 0:
		return 0, in.errorf(field, "container %s declares no TCP port (its ports: %s): declare the one the app listens on, e.g. {name: http, containerPort: 8080}", c.Name, formatPorts(c))
	}
	return 0, in.errorf(field, "container %s has several TCP ports (%s) and none is named http: set the annotation %s to the one tidegate fronts", c.Name, formatPorts(c), AnnotationAppPort)
}

// checkCollisions fails when a container already uses a port number the
// sidecar listens on (all containers share the pod's network) or a port
// name the injection adds.
func (in *podInjection) checkCollisions(p Params, app, appPort int, publicName string) error {
	numbers := map[int32]string{p.ListenPort: "listen", p.HealthPort: "health", p.MetricsPort: "metrics", p.AdminPort: "admin"}
	names := map[string]bool{publicName: true, AppPortName: true, HealthPortName: true, MetricsPortName: true, UnnamedPortName: true}
	check := func(init bool, i int, c *corev1.Container) error {
		for j, pt := range c.Ports {
			if what, ok := numbers[pt.ContainerPort]; ok {
				return in.errorf(containerField(init, c.Name)+".ports", "port %d is tidegate's %s port (containers share the pod's network): move the container's port, or run the injector with other ports", pt.ContainerPort, what)
			}
			if !init && i == app && j == appPort {
				continue
			}
			if names[pt.Name] {
				return in.errorf(containerField(init, c.Name)+".ports", "port name %q is one injection gives to tidegate (a Service targeting it must reach one port): rename the container's port", pt.Name)
			}
		}
		return nil
	}
	for i := range in.spec.InitContainers {
		if err := check(true, i, &in.spec.InitContainers[i]); err != nil {
			return err
		}
	}
	for i := range in.spec.Containers {
		if err := check(false, i, &in.spec.Containers[i]); err != nil {
			return err
		}
	}
	return nil
}

// raiseGrace raises terminationGracePeriodSeconds to what the drain and the
// app's stop need, and returns the record of the old value (nil when it was
// high enough).
func (in *podInjection) raiseGrace(p Params) *graceRecord {
	need := ceilSeconds(p.DrainTimeout + p.AppStopTimeout + graceMargin)
	have := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if in.spec.TerminationGracePeriodSeconds != nil {
		have = *in.spec.TerminationGracePeriodSeconds
	}
	if have >= need {
		return nil
	}
	rec := &graceRecord{Was: in.spec.TerminationGracePeriodSeconds}
	in.spec.TerminationGracePeriodSeconds = &need
	in.warnings = append(in.warnings, fmt.Sprintf("terminationGracePeriodSeconds raised from %d to %d: drain timeout %s + app stop timeout %s + %s margin",
		have, need, p.DrainTimeout, p.AppStopTimeout, graceMargin))
	return rec
}

// annotate adds the scrape annotations (when the pod has no prometheus.io/
// annotation of its own) and kubectl's default container (when absent), and
// returns the keys it added.
func (in *podInjection) annotate(p Params, app string) []string {
	if in.meta.Annotations == nil {
		in.meta.Annotations = map[string]string{}
	}
	ann := in.meta.Annotations
	var added []string
	hasProm := false
	for k := range ann {
		if strings.HasPrefix(k, "prometheus.io/") {
			hasProm = true
		}
	}
	if !hasProm {
		ann["prometheus.io/scrape"] = "true"
		ann["prometheus.io/port"] = strconv.Itoa(int(p.MetricsPort))
		ann["prometheus.io/path"] = "/metrics"
		added = append(added, "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
	}
	if _, ok := ann[defaultContainerAnnotation]; !ok {
		ann[defaultContainerAnnotation] = app
		added = append(added, defaultContainerAnnotation)
	}
	return added
}
