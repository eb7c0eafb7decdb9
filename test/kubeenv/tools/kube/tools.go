//go:build tools

// Package kube pins the Kubernetes binaries the injector's tests run:
// go build k8s.io/kubernetes/cmd/kube-apiserver and
// k8s.io/kubernetes/cmd/kube-controller-manager in this module.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
