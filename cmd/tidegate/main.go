// Command tidegate is the sidecar: it fronts an app's port, tracks every
// request in flight, and makes shutdown and health honest.
//
// Usage:
//
//	tidegate run --upstream 127.0.0.1:3000 [flags]   run the sidecar
//	tidegate drain [--wait 30s]                      drain a running sidecar (preStop hooks)
//	tidegate prestop --token T [-- HOOK...]          drain, then run the original preStop hook
//	tidegate demo                                    see it work on a built-in app
//	tidegate version                                 print version, commit and Go version
package main

import (
	"os"
	"os/signal"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, handledSignals()...)
	os.Exit(cli(os.Args[1:], env{getenv: os.Getenv, stdout: os.Stdout, stderr: os.Stderr, signals: signals}))
}
