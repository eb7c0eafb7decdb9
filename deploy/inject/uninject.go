package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// statusVersion is the version of the tidegate.io/status record.
const statusVersion = 1

// status is the tidegate.io/status record: everything injection changed,
// with the values it replaced, so that UninjectPod restores them exactly.
type status struct {
	Version int `json:"version"`
	// Mode is where the sidecar went.
	Mode Mode `json:"mode"`
	// AppContainer is the container tidegate fronts.
	AppContainer string `json:"appContainer"`
	// AppPort is the app port that was renamed tidegate-app; nil when it had
	// no name.
	AppPort *portRecord `json:"appPort,omitempty"`
	// Probes are the probes rewritten, as they were.
	Probes []probeRecord `json:"probes,omitempty"`
	// Lifecycle is the app container's lifecycle before (null when none).
	Lifecycle *corev1.Lifecycle `json:"lifecycle"`
	// BinVolume is true when the tidegate-bin volume and mount were added.
	BinVolume bool `json:"binVolume,omitempty"`
	// Grace is set when terminationGracePeriodSeconds was raised.
	Grace *graceRecord `json:"terminationGracePeriodSeconds,omitempty"`
	// Annotations are the annotations added (besides tidegate.io/status).
	Annotations []string `json:"annotations,omitempty"`
}

type portRecord struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
}

type probeRecord struct {
	Container string        `json:"container"`
	Probe     string        `json:"probe"` // readinessProbe, livenessProbe or startupProbe
	Was       *corev1.Probe `json:"was"`
}

type graceRecord struct {
	Was *int64 `json:"was"` // nil: it was not set
}

// UninjectPod takes the sidecar away from the pod (or pod template) meta and
// spec, in place, restoring what the tidegate.io/status record says
// injection changed. It reports false, and changes nothing, when the pod
// carries no record. On error meta and spec are unchanged.
func UninjectPod(meta *metav1.ObjectMeta, spec *corev1.PodSpec) (bool, error) {
	if meta == nil || spec == nil {
		return false, &Error{Object: "Pod", Msg: "no metadata or spec: give both"}
	}
	raw, ok := meta.Annotations[AnnotationStatus]
	if !ok {
		return false, nil
	}
	in := newPodInjection(meta, spec)
	var st status
	dec := json.NewDecoder(bytes.NewReader([]byte(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil || st.Version != statusVersion {
		if err == nil {
			err = fmt.Errorf("version %d, want %d", st.Version, statusVersion)
		}
		return false, in.errorf(annotationField(AnnotationStatus), "not a record injection wrote (%v): remove the tidegate container and this annotation by hand", err)
	}
	if err := in.uninject(&st); err != nil {
		return false, err
	}
	*meta, *spec = *in.meta, *in.spec
	return true, nil
}

func (in *podInjection) uninject(st *status) error {
	isSidecar := func(c corev1.Container) bool { return c.Name == SidecarName }
	in.spec.InitContainers = slices.DeleteFunc(in.spec.InitContainers, isSidecar)
	in.spec.Containers = slices.DeleteFunc(in.spec.Containers, isSidecar)
	if len(in.spec.InitContainers) == 0 {
		in.spec.InitContainers = nil
	}
	container := func(name string) *corev1.Container {
		for i := range in.spec.Containers {
			if in.spec.Containers[i].Name == name {
				return &in.spec.Containers[i]
			}
		}
		return nil
	}
	app := container(st.AppContainer)
	if app == nil {
		return in.errorf(containerField(false, st.AppContainer), "the app container the %s record names is gone: remove the annotation and what injection added by hand", AnnotationStatus)
	}
	if r := st.AppPort; r != nil {
		// The port injection renamed is the one named tidegate-app: at the
		// recorded index unless the ports were edited since.
		i := r.Index
		if i < 0 || i >= len(app.Ports) || app.Ports[i].Name != AppPortName {
			i = slices.IndexFunc(app.Ports, func(pt corev1.ContainerPort) bool { return pt.Name == AppPortName })
		}
		if i < 0 {
			return in.errorf(containerField(false, app.Name)+".ports", "no port named %s, the one injection renamed from %q: restore the port name %q by hand", AppPortName, r.Name, r.Name)
		}
		app.Ports[i].Name = r.Name
	}
	for _, r := range st.Probes {
		c := container(r.Container)
		k, ok := findProbeKind(r.Probe)
		if c == nil || !ok {
			return in.errorf(containerField(false, r.Container), "the record names a %s of a container that is gone: restore it by hand", r.Probe)
		}
		*k.get(c) = r.Was
	}
	app.Lifecycle = st.Lifecycle
	if st.BinVolume {
		in.spec.Volumes = slices.DeleteFunc(in.spec.Volumes, func(v corev1.Volume) bool { return v.Name == BinVolume })
		app.VolumeMounts = slices.DeleteFunc(app.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == BinVolume })
		if len(in.spec.Volumes) == 0 {
			in.spec.Volumes = nil
		}
		if len(app.VolumeMounts) == 0 {
			app.VolumeMounts = nil
		}
	}
	if st.Grace != nil {
		in.spec.TerminationGracePeriodSeconds = st.Grace.Was
	}
	for _, k := range st.Annotations {
		delete(in.meta.Annotations, k)
	}
	delete(in.meta.Annotations, AnnotationStatus)
	if len(in.meta.Annotations) == 0 {
		in.meta.Annotations = nil
	}
	return nil
}
