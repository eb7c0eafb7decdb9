package inject

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The sidecar's identity: the distroless nonroot user.
const sidecarUID = 65532

// sidecar is the tidegate container: it listens on p.ListenPort under the
// app port's name publicName and forwards to the app on appPort; probes is
// TIDEGATE_APP_PROBES ("" for none); chained adds the copy of its binary
// for the app's chained preStop hook.
func sidecar(p Params, protocol string, appPort int, publicName, token, probes string, chained bool) corev1.Container {
	args := []string{"run",
		"--listen=:" + strconv.Itoa(int(p.ListenPort)),
		"--protocol=" + protocol,
		"--upstream=127.0.0.1:" + strconv.Itoa(appPort),
		"--health-listen=:" + strconv.Itoa(int(p.HealthPort)),
		"--admin-listen=127.0.0.1:" + strconv.Itoa(int(p.AdminPort)),
		"--metrics-listen=:" + strconv.Itoa(int(p.MetricsPort)),
		"--app-stop=none",
		"--drain-delay=" + p.DrainDelay.String(),
		"--drain-timeout=" + p.DrainTimeout.String(),
		"--drain-report-file=" + corev1.TerminationMessagePathDefault,
	}
	env := []corev1.EnvVar{{Name: DrainTokenEnv, Value: token}}
	if probes != "" {
		env = append(env, corev1.EnvVar{Name: AppProbesEnv, Value: probes})
	}
	health := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(p.HealthPort)}},
			PeriodSeconds:    period,
			FailureThreshold: failures,
		}
	}
	yes, no, uid := true, false, int64(sidecarUID)
	c := corev1.Container{
		Name:  SidecarName,
		Image: p.Image,
		Args:  args,
		Ports: []corev1.ContainerPort{
			{Name: publicName, ContainerPort: p.ListenPort},
			{Name: HealthPortName, ContainerPort: p.HealthPort},
			{Name: MetricsPortName, ContainerPort: p.MetricsPort},
		},
		Env:       env,
		Resources: *p.Resources.DeepCopy(),
		// /livez/app, not /livez: /livez also holds the app containers'
		// liveness probes (TIDEGATE_APP_PROBES), and an app that fails its
		// own must restart the app, not tidegate. /livez/app passes while
		// tidegate answers (there is no child to watch).
		StartupProbe:   health("/livez/app", 1, 30),
		ReadinessProbe: health("/readyz", 2, 1),
		LivenessProbe:  health("/livez/app", 10, 3),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             &yes,
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if chained {
		c.Args = append(c.Args, "--copy-binary-to="+BinDir)
		c.VolumeMounts = []corev1.VolumeMount{{Name: BinVolume, MountPath: BinDir}}
	}
	if p.Mode == Native {
		always := corev1.ContainerRestartPolicyAlways
		c.RestartPolicy = &always
	}
	return c
}
