package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// env is what a command gets from the process, injected so that tests run
// commands in-process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	signals        <-chan os.Signal // SIGTERM and SIGINT; nil means none arrive
}

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1 // a bad document, or the webhook failed
	exitBadUsage = 2 // bad flags or arguments
)

// cli runs one command and returns the process exit code.
func cli(args []string, e env) int {
	if len(args) == 0 {
		writeUsage(e.stderr)
		return exitBadUsage
	}
	var err error
	switch args[0] {
	case "inject":
		err = manifestCmd(args[1:], e, true)
	case "uninject":
		err = manifestCmd(args[1:], e, false)
	case "webhook":
		err = webhookCmd(args[1:], e)
	case "certs":
		err = certsCmd(args[1:], e)
	case "version", "--version", "-version":
		writeVersion(e.stdout)
		return exitOK
	case "help", "-h", "--help":
		writeUsage(e.stdout)
		return exitOK
	default:
		fmt.Fprintf(e.stderr, "tidegate-inject: unknown command %q\n\n", args[0])
		writeUsage(e.stderr)
		return exitBadUsage
	}
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "tidegate-inject %s: %v\n", args[0], err)
		return exitBadUsage
	default:
		fmt.Fprintf(e.stderr, "tidegate-inject %s: %v\n", args[0], err)
		return exitFailure
	}
}

// usageError is bad flags or arguments: exit code 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func writeUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: tidegate-inject <command> [flags]

Commands:
  inject    add the tidegate sidecar to the workloads of manifests (-f FILE, or - for stdin)
  uninject  take it away again
  webhook   serve the mutating admission webhook over TLS
  certs     write a CA and a serving certificate for the webhook (the self-contained path)
  version   print version, commit and Go version

Each command has --help.
`)
}

// parseFlags parses args with fs, turning its errors into usage errors and
// rejecting leftover arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	return nil
}

// version and commit are stamped at link time (-ldflags "-X main.version=…
// -X main.commit=…"); unstamped builds use what the toolchain recorded.
var (
	version = ""
	commit  = ""
)

func writeVersion(w io.Writer) {
	v, c := version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	if c == "" {
		c = "unknown"
	}
	fmt.Fprintf(w, "tidegate-inject %s\ncommit %s\n%s %s/%s\n", v, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
