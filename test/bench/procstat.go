package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// usage is what /proc says about a process and its descendants at one
// instant, summed over them.
type usage struct {
	Ticks      int64 // utime+stime, in clock ticks
	ChildTicks int64 // cutime+cstime: of the children they waited for
	HWMKiB     int64 // VmHWM: peak resident set
	RSSKiB     int64 // VmRSS: resident set now
	Procs      int   // processes counted
}

// sampleTree reads the usage of root and every descendant of it.
func sampleTree(root int) (usage, error) {
	pids, err := treePIDs(root)
	if err != nil {
		return usage{}, err
	}
	var u usage
	for _, pid := range pids {
		st, err := readStat(pid)
		if err != nil {
			if pid == root {
				return usage{}, err
			}
			continue // a child that just exited
		}
		hwm, err1 := readStatusKiB(pid, "VmHWM")
		rss, err2 := readStatusKiB(pid, "VmRSS")
		if err := errors.Join(err1, err2); err != nil {
			if pid == root {
				return usage{}, err
			}
			continue
		}
		u.Ticks += st.Ticks
		u.ChildTicks += st.ChildTicks
		u.HWMKiB += hwm
		u.RSSKiB += rss
		u.Procs++
	}
	return u, nil
}

// treePIDs returns root and its descendants, from the ppid of every process
// in /proc.
func treePIDs(root int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			children[st.PPID] = append(children[st.PPID], pid)
		}
	}
	pids := []int{root}
	for i := 0; i < len(pids); i++ {
		pids = append(pids, children[pids[i]]...)
	}
	return pids, nil
}

// procStat is what the harness reads of /proc/PID/stat.
type procStat struct {
	PPID       int
	Ticks      int64 // utime+stime
	ChildTicks int64 // cutime+cstime: of its children that exited and were waited for
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(string(b))
}

// parseStat parses /proc/PID/stat. The command name (field 2) is in
// parentheses and may hold spaces, so fields are counted from the last ')'.
func parseStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("stat: no ')'")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return procStat{}, errors.New("stat: too few fields")
	}
	var n [5]int64 // fields 4 (ppid), 14 (utime), 15 (stime), 16 (cutime), 17 (cstime)
	for j, k := range []int{1, 11, 12, 13, 14} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("stat field %d: %w", k+3, err)
		}
		n[j] = v
	}
	return procStat{PPID: int(n[0]), Ticks: n[1] + n[2], ChildTicks: n[3] + n[4]}, nil
}

// readStatusKiB returns a "Key:  N kB" line of /proc/PID/status.
func readStatusKiB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, key)
}

// hostBusy returns the CPU time the whole machine spent in user, nice,
// system and steal (the first line of /proc/stat), in clock ticks. Time in
// interrupts is left out: the loopback network stack runs partly there, on
// behalf of the processes being measured.
func hostBusy() (int64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseHostBusy(string(b))
}

func parseHostBusy(stat string) (int64, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy int64
	for _, k := range []int{1, 2, 3, 8} { // user, nice, system, steal
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += v
	}
	return busy, nil
}

// countFDs returns the number of open file descriptors of a process.
func countFDs(pid int) (int, error) {
	e, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(e), err
}

// clockTicks returns the kernel's clock ticks per second (getconf CLK_TCK),
// or 100, its value on every Linux architecture, if getconf fails.
func clockTicks(ctx context.Context) int64 {
	out, err := runTool(ctx, 5*time.Second, -1, "getconf", "CLK_TCK")
	if err != nil {
		return 100
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
}
