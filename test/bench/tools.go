package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// installTimeout bounds apt-get.
const installTimeout = 5 * time.Minute

// tool is an external program the harness can use.
type tool struct {
	Name     string   // program name
	Packages []string // Debian packages that provide it, preferred first
	Version  []string // arguments that make it print its version
	Path     string   // where it is; "" when missing
	About    string   // its version line; "" when missing
}

// tools are the external programs of the harness, by name.
type tools map[string]*tool

func (t tools) path(name string) string { return t[name].Path }

// findTools looks up wrk, h2load, nginx, haproxy and taskset. With install
// set and as root, it first installs the missing ones with apt-get. What it
// did, and what is still missing, goes to log.
func findTools(ctx context.Context, install bool, log io.Writer) tools {
	t := tools{
		"wrk":     {Name: "wrk", Packages: []string{"wrk"}, Version: []string{"-v"}},
		"h2load":  {Name: "h2load", Packages: []string{"nghttp2-client"}, Version: []string{"--version"}},
		"nginx":   {Name: "nginx", Packages: []string{"nginx-light", "nginx"}, Version: []string{"-v"}},
		"haproxy": {Name: "haproxy", Packages: []string{"haproxy"}, Version: []string{"-v"}},
		"taskset": {Name: "taskset", Packages: []string{"util-linux"}, Version: []string{"--version"}},
	}
	var pkgs []string
	for _, name := range []string{"wrk", "h2load", "nginx", "haproxy", "taskset"} {
		if t[name].Path = lookTool(name); t[name].Path == "" {
			pkgs = append(pkgs, t[name].Packages...)
		}
	}
	if len(pkgs) > 0 && install && os.Geteuid() == 0 && lookTool("apt-get") != "" {
		fmt.Fprintf(log, "installing %s with apt-get\n", strings.Join(pkgs, " "))
		if err := aptInstall(ctx, pkgs); err != nil {
			fmt.Fprintf(log, "apt-get failed: %v\n", err)
		}
	}
	for _, tl := range t {
		if tl.Path == "" {
			tl.Path = lookTool(tl.Name)
		}
		if tl.Path == "" {
			fmt.Fprintf(log, "%s not found (Debian package %s): its rows are skipped\n", tl.Name, tl.Packages[0])
			continue
		}
		tl.About = versionLine(ctx, tl.Path, tl.Version...)
	}
	return t
}

// lookTool finds a program in PATH or in the sbin directories, which are
// not always in a non-login root's PATH.
func lookTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// aptInstall installs the packages that exist among pkgs, of each
// alternative group the first that exists. If apt-cache knows none of
// them, it runs apt-get update first.
func aptInstall(ctx context.Context, pkgs []string) error {
	known := func() []string {
		var out []string
		for _, p := range pkgs {
			if _, err := runTool(ctx, time.Minute, -1, "apt-cache", "show", "--no-all-versions", p); err == nil {
				out = append(out, p)
			}
		}
		return dropAlternatives(out)
	}
	have := known()
	if len(have) < len(dropAlternatives(pkgs)) {
		if _, err := runTool(ctx, installTimeout, -1, "apt-get", "update", "-q"); err != nil {
			return err
		}
		have = known()
	}
	if len(have) == 0 {
		return fmt.Errorf("none of %s is a known package", strings.Join(pkgs, ", "))
	}
	args := append([]string{"DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "--no-install-recommends"}, have...)
	_, err := runTool(ctx, installTimeout, -1, "env", args...)
	return err
}

// dropAlternatives keeps "nginx-light" and drops "nginx" when both are
// there: they provide the same program.
func dropAlternatives(pkgs []string) []string {
	var out []string
	for _, p := range pkgs {
		if p == "nginx" && slices.Contains(pkgs, "nginx-light") {
			continue
		}
		out = append(out, p)
	}
	return out
}

var versionNumber = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)

// versionLine returns "name x.y.z" from what a program prints about its
// version (some print it on stderr, some exit non-zero).
func versionLine(ctx context.Context, bin string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = childAttr()
	out, _ := cmd.CombinedOutput()
	v := versionNumber.FindString(string(out))
	if v == "" {
		return filepath.Base(bin)
	}
	return filepath.Base(bin) + " " + v
}
