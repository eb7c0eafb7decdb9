package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync"
)

// notes collects what a reader of the report should know: skipped rows,
// errors during a run, warnings in a proxy's log.
type notes struct {
	mu    sync.Mutex
	lines []string
}

func (n *notes) add(format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lines = append(n.lines, fmt.Sprintf(format, args...))
}

func (n *notes) list() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.lines...)
}

// scanLog counts the lines of a proxy's log that report a problem, by the
// log's kind, and returns the first (shortened).
func scanLog(path, kind string) (int, string) {
	f, err := os.Open(path)
	if err != nil {
		return 0, ""
	}
	defer f.Close()
	var n int
	var first string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); isProblem(line, kind) {
			if n == 0 {
				first = tail(line, 300)
			}
			n++
		}
	}
	return n, first
}

// isProblem says whether a log line reports a problem. tidegate logs JSON
// with a level; nginx tags lines [warn], [error], …; HAProxy [WARNING],
// [ALERT]; the Go reference proxy logs only problems.
func isProblem(line, kind string) bool {
	switch kind {
	case pathTidegate:
		for _, l := range []string{`"level":"warn"`, `"level":"error"`, `"level":"dpanic"`, `"level":"panic"`, `"level":"fatal"`} {
			if strings.Contains(line, l) {
				return true
			}
		}
		return strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:")
	case pathNginx:
		for _, l := range []string{"[warn]", "[error]", "[crit]", "[alert]", "[emerg]"} {
			if strings.Contains(line, l) {
				return true
			}
		}
		return false
	case pathHAProxy:
		return strings.Contains(line, "[WARNING]") || strings.Contains(line, "[ALERT]")
	default:
		return strings.TrimSpace(line) != ""
	}
}
