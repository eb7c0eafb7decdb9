package main

import (
	"flag"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/tidegate/tidegate/deploy/inject"
)

// paramFlags are the flags of every inject.Params field, shared by inject
// and webhook. Pod annotations override them.
type paramFlags struct {
	image, mode                        string
	listen, health, metrics, admin     int
	cpuReq, memReq, cpuLimit, memLimit string
	p                                  inject.Params
}

func addParamFlags(fs *flag.FlagSet) *paramFlags {
	pf := &paramFlags{}
	d := inject.Params{}.WithDefaults()
	fs.StringVar(&pf.image, "image", d.Image, "sidecar image (annotation "+inject.AnnotationImage+")")
	fs.StringVar(&pf.mode, "mode", string(d.Mode), "native (an init container with restartPolicy Always) or classic (a second container) (annotation "+inject.AnnotationMode+")")
	fs.IntVar(&pf.listen, "listen-port", int(d.ListenPort), "sidecar's public port (the app port's name moves here)")
	fs.IntVar(&pf.health, "health-port", int(d.HealthPort), "sidecar's health port (/readyz, /livez, /app-health/…, GET /drain)")
	fs.IntVar(&pf.metrics, "metrics-port", int(d.MetricsPort), "sidecar's metrics port (GET /metrics on the pod network)")
	fs.IntVar(&pf.admin, "admin-port", int(d.AdminPort), "sidecar's admin port (127.0.0.1 only)")
	fs.DurationVar(&pf.p.DrainDelay, "drain-delay", d.DrainDelay, "sidecar's --drain-delay (annotation "+inject.AnnotationDrainDelay+")")
	fs.DurationVar(&pf.p.DrainTimeout, "drain-timeout", d.DrainTimeout, "sidecar's --drain-timeout; the preStop hook waits this + 5s (annotation "+inject.AnnotationDrainTimeout+")")
	fs.DurationVar(&pf.p.AppStopTimeout, "app-stop-timeout", d.AppStopTimeout, "how long the app takes to stop, for terminationGracePeriodSeconds (annotation "+inject.AnnotationAppStopTimeout+")")
	fs.StringVar(&pf.cpuReq, "cpu-request", "", "sidecar CPU request, a quantity (default 50m; 0 removes it)")
	fs.StringVar(&pf.memReq, "memory-request", "", "sidecar memory request (default 32Mi; 0 removes it)")
	fs.StringVar(&pf.cpuLimit, "cpu-limit", "", "sidecar CPU limit (default none; 0 removes it)")
	fs.StringVar(&pf.memLimit, "memory-limit", "", "sidecar memory limit (default 128Mi; 0 removes it)")
	return pf
}

// params checks the parsed flags and returns the Params they make.
func (pf *paramFlags) params() (inject.Params, error) {
	p := pf.p
	p.Image, p.Mode = pf.image, inject.Mode(pf.mode)
	for _, port := range []struct {
		name string
		v    int
		dst  *int32
	}{{"--listen-port", pf.listen, &p.ListenPort}, {"--health-port", pf.health, &p.HealthPort}, {"--metrics-port", pf.metrics, &p.MetricsPort}, {"--admin-port", pf.admin, &p.AdminPort}} {
		if port.v < 1 || port.v > 65535 {
			return p, usagef("%s %d: want 1-65535", port.name, port.v)
		}
		*port.dst = int32(port.v)
	}
	res := inject.Params{}.WithDefaults().Resources.DeepCopy()
	for _, q := range []struct {
		flag, v string
		list    *corev1.ResourceList
		name    corev1.ResourceName
	}{{"--cpu-request", pf.cpuReq, &res.Requests, corev1.ResourceCPU}, {"--memory-request", pf.memReq, &res.Requests, corev1.ResourceMemory},
		{"--cpu-limit", pf.cpuLimit, &res.Limits, corev1.ResourceCPU}, {"--memory-limit", pf.memLimit, &res.Limits, corev1.ResourceMemory}} {
		if q.v == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.v)
		if err != nil || v.Sign() < 0 {
			return p, usagef("%s %q: want a Kubernetes quantity such as 50m, 64Mi (0 removes it)", q.flag, q.v)
		}
		if *q.list == nil {
			*q.list = corev1.ResourceList{}
		}
		if v.IsZero() {
			delete(*q.list, q.name)
		} else {
			(*q.list)[q.name] = v
		}
	}
	p.Resources = res
	if err := p.WithDefaults().Validate(); err != nil {
		return p, usageError{fmt.Errorf("injection parameters: %w", err)}
	}
	return p, nil
}
