package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to the harness (no subcommand) or to one of the processes
// the harness starts from this same binary, and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	var err error
	switch sub {
	case "":
		if isWebhookMode(args) {
			err = runWebhookBench(ctx, args, stdout, stderr)
		} else {
			err = runHarness(ctx, args, stdout, stderr)
		}
	case "app":
		err = runApp(ctx, args, stderr)
	case "reverseproxy":
		err = runReverseProxy(ctx, args, stderr)
	case "openloop":
		err = runOpenLoopCmd(ctx, args, stdout, stderr)
	case "grpcload":
		err = runGRPCLoadCmd(ctx, args, stdout, stderr)
	default:
		err = fmt.Errorf("unknown subcommand %q (want none, app, reverseproxy, openloop or grpcload)", sub)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	default:
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
}
