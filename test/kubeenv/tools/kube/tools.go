//go:build tools

// Package kube pins the Kubernetes binaries the injector's tests run:
// kube-apiserver, kube-controller-manager and kubectl, built by build.sh
// next to this file.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
