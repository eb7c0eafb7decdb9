package inject

import (
	"net"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// binVolumeSize bounds the emptyDir the sidecar copies its binary to.
const binVolumeSize = "64Mi"

// pairPreStop makes the app container's preStop hook drain tidegate first:
// an httpGet on the sidecar's /drain when there was no hook, else an exec
// hook through the tidegate binary that drains and then runs the original
// hook. It reports whether the hook is chained (the binary is needed).
// A postStart hook on movedName, the app port's name that moves to the
// sidecar, gets the port's number.
func (in *podInjection) pairPreStop(p Params, c *corev1.Container, movedName, token string) (bool, error) {
	field := containerField(false, c.Name) + ".lifecycle"
	wait := (p.DrainTimeout + preStopSlack).String()
	if c.Lifecycle == nil {
		c.Lifecycle = &corev1.Lifecycle{}
	}
	if ps := c.Lifecycle.PostStart; ps != nil && movedName != "" {
		if h := ps.HTTPGet; h != nil && h.Port.Type == intstr.String && h.Port.StrVal == movedName {
			n, err := in.resolvePort(c, h.Port, field+".postStart.httpGet.port")
			if err != nil {
				return false, err
			}
			h.Port = intstr.FromInt(n)
		}
		if t := ps.TCPSocket; t != nil && t.Port.Type == intstr.String && t.Port.StrVal == movedName {
			n, err := in.resolvePort(c, t.Port, field+".postStart.tcpSocket.port")
			if err != nil {
				return false, err
			}
			t.Port = intstr.FromInt(n)
		}
	}
	old := c.Lifecycle.PreStop
	if old == nil || (old.Exec == nil && old.HTTPGet == nil && old.Sleep == nil && old.TCPSocket == nil) {
		c.Lifecycle.PreStop = &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{
			Path:        "/drain?wait=" + wait,
			Port:        intstr.FromInt32(p.HealthPort),
			HTTPHeaders: []corev1.HTTPHeader{{Name: DrainTokenHeader, Value: token}},
		}}
		return false, nil
	}
	cmd := []string{BinDir + "/tidegate", "prestop", "--health=127.0.0.1:" + strconv.Itoa(int(p.HealthPort)), "--token-file=" + BinDir + "/" + TokenFileName, "--wait=" + wait}
	switch {
	case old.Exec != nil:
		cmd = append(append(cmd, "--"), old.Exec.Command...)
	case old.HTTPGet != nil:
		h := old.HTTPGet
		port, err := in.resolvePort(c, h.Port, field+".preStop.httpGet.port")
		if err != nil {
			return false, err
		}
		scheme := strings.ToLower(string(h.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		path := h.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		cmd = append(cmd, "--then-http-get="+scheme+"://"+net.JoinHostPort(h.Host, strconv.Itoa(port))+path)
		for _, hd := range h.HTTPHeaders {
			cmd = append(cmd, "--then-header="+hd.Name+": "+hd.Value)
		}
	case old.Sleep != nil:
		cmd = append(cmd, "--then-sleep="+seconds(old.Sleep.Seconds))
	default:
		return false, in.errorf(field+".preStop.tcpSocket", "Kubernetes does not run a tcpSocket preStop hook (it is deprecated and a no-op), so there is nothing to chain after the drain: remove it, or make it an exec or httpGet hook")
	}
	c.Lifecycle.PreStop = &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: cmd}}
	return true, nil
}

// addBinVolume adds the emptyDir the sidecar copies its binary to, mounted
// read-only in the app container c.
func (in *podInjection) addBinVolume(c *corev1.Container) error {
	for _, v := range in.spec.Volumes {
		if v.Name == BinVolume {
			return in.errorf("spec.volumes["+BinVolume+"]", "a volume named %s is already there: injection adds it for the chained preStop hook; rename yours", BinVolume)
		}
	}
	for _, m := range c.VolumeMounts {
		if m.Name == BinVolume || m.MountPath == BinDir {
			return in.errorf(containerField(false, c.Name)+".volumeMounts", "a mount of %s or at %s is already there: injection mounts the tidegate binary there for the chained preStop hook; move yours", BinVolume, BinDir)
		}
	}
	size := resource.MustParse(binVolumeSize)
	in.spec.Volumes = append(in.spec.Volumes, corev1.Volume{Name: BinVolume,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &size}}})
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: BinVolume, MountPath: BinDir, ReadOnly: true})
	return nil
}
