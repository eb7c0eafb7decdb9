// Command tidegate-inject adds the tidegate sidecar to Kubernetes
// workloads: as a CLI over manifests (like istioctl kube-inject) or as the
// mutating admission webhook. It is the only tidegate binary that links
// k8s.io/api.
//
// Usage:
//
//	tidegate-inject inject -f FILE|- [flags]     manifests in, injected manifests out
//	tidegate-inject uninject -f FILE|-           the reverse
//	tidegate-inject webhook --tls-cert F --tls-key K [flags]
//	tidegate-inject certs --hosts a,b --out DIR  a CA and a serving certificate
//	tidegate-inject version
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	os.Exit(cli(os.Args[1:], env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, signals: signals}))
}
