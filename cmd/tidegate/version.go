package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version and commit are stamped at link time by the Makefile and the
// Dockerfile (-ldflags "-X main.version=… -X main.commit=…"); they are never
// written at run time. Unstamped builds fall back to what the Go toolchain
// recorded in the binary.
var (
	version = ""
	commit  = ""
)

type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && b.Commit == "" {
				b.Commit = s.Value
			}
			if s.Key == "vcs.modified" && s.Value == "true" && b.Commit != "" {
				b.Commit += "-dirty"
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func writeVersion(w io.Writer) {
	b := readBuildInfo()
	fmt.Fprintf(w, "tidegate %s\ncommit %s\n%s %s\n", b.Version, b.Commit, b.GoVersion, b.Platform)
}
