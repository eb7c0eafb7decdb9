package drain

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"
)

const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER from <linux/prctl.h>

// BecomeSubreaper makes orphaned descendants re-parent to tidegate instead
// of PID 1, so that RunReaper can reap them. Not needed when tidegate is
// PID 1.
func BecomeSubreaper() error {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", errno)
	}
	return nil
}

// RunReaper reaps orphaned zombies re-parented to tidegate (as PID 1 or a
// subreaper) until ctx ends. It only reaps a zombie child that has stayed a
// zombie for at least linger, so it never steals the exit status of a child
// that os/exec is about to Wait for (the app, a stop command, an exec
// probe): those are reaped within milliseconds by their owner.
func RunReaper(ctx context.Context, log *zap.Logger, interval, linger time.Duration) {
	if log == nil {
		log = zap.NewNop()
	}
	self := os.Getpid()
	seen := map[int]time.Time{}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		zombies := zombieChildren(self)
		for pid := range seen {
			if _, still := zombies[pid]; !still {
				delete(seen, pid)
			}
		}
		for pid := range zombies {
			first, ok := seen[pid]
			if !ok {
				seen[pid] = now
				continue
			}
			if now.Sub(first) < linger {
				continue
			}
			var ws syscall.WaitStatus
			if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && got == pid {
				log.Info("reaped orphaned process", zap.Int("pid", pid), zap.Int("exit_code", ws.ExitStatus()))
			}
			delete(seen, pid)
		}
	}
}

// zombieChildren lists the pids whose parent is ppid and whose state is Z.
func zombieChildren(ppid int) map[int]struct{} {
	out := map[int]struct{}{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) S ppid …": comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		f := bytes.Fields(b[i+2:])
		if len(f) < 2 || f[0][0] != 'Z' {
			continue
		}
		if p, err := strconv.Atoi(string(f[1])); err == nil && p == ppid {
			out[pid] = struct{}{}
		}
	}
	return out
}
