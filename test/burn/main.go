// Command burn keeps CPU cores busy, so that tests run as on a loaded
// machine: `make test-stress` starts it before the suite and kills it
// after. On a 2-core machine one burner (the default) leaves the tests a
// single core, and the scheduler delays whichever goroutine the tests
// race.
//
// Usage:
//
//	burn [--procs N] [--max DUR] [--check]
//
// It spins --procs goroutines (default 1), each busy on a core, until it
// is stopped: by SIGINT or SIGTERM, when its parent goes away (it is
// re-parented, so a killed make never leaves it behind), or after --max
// (default 2h), whichever comes first. It exits 0 when stopped, 2 on bad
// flags. With --check it only checks its flags, for a caller that starts
// it in the background and would not see it fail.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// parentPoll is how often burn checks that its parent is still there.
const parentPoll = 200 * time.Millisecond

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("burn", flag.ContinueOnError)
	fs.SetOutput(stderr)
	procs := fs.Int("procs", 1, "busy goroutines, each keeping one core busy (1..number of CPUs)")
	maxFor := fs.Duration("max", 2*time.Hour, "stop after this long even if nobody stops burn (>0)")
	checkOnly := fs.Bool("check", false, "check the flags and exit (0 if good) without burning")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := check(*procs, *maxFor, runtime.NumCPU()); err != nil {
		fmt.Fprintf(stderr, "burn: %v\n", err)
		return 2
	}
	if *checkOnly {
		return 0
	}
	var stop atomic.Bool
	defer stop.Store(true)
	for range *procs {
		go spin(&stop)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	deadline := time.NewTimer(*maxFor)
	defer deadline.Stop()
	tick := time.NewTicker(parentPoll)
	defer tick.Stop()
	ppid := os.Getppid()
	for {
		select {
		case s := <-sig:
			fmt.Fprintf(stderr, "burn: %v; stopping\n", s)
			return 0
		case <-deadline.C:
			fmt.Fprintf(stderr, "burn: --max %v reached; stopping\n", *maxFor)
			return 0
		case <-tick.C:
			if os.Getppid() != ppid {
				fmt.Fprintln(stderr, "burn: parent is gone; stopping")
				return 0
			}
		}
	}
}

// check says what is wrong with the flags, if anything.
func check(procs int, maxFor time.Duration, cpus int) error {
	if procs < 1 || procs > cpus {
		return fmt.Errorf("--procs %d: want 1..%d (the number of CPUs)", procs, cpus)
	}
	if maxFor <= 0 {
		return errors.New("--max " + maxFor.String() + ": want a positive duration such as 1h")
	}
	return nil
}

// spin keeps one thread busy until stop. The loop body is arithmetic on a
// local, so it touches no shared memory but stop's load.
func spin(stop *atomic.Bool) {
	x := uint64(1)
	for !stop.Load() {
		for range 1 << 16 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	runtime.KeepAlive(x)
}
