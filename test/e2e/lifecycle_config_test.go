package e2e

import (
	"strings"
	"testing"
)

// TestLifecycleConfigErrors: bad drain and app settings exit 2 at once with
// one clear line naming the value; an app command that cannot be run exits
// 1 naming the command. Nothing is served either way.
func TestLifecycleConfigErrors(t *testing.T) {
	t.Parallel()
	free := []string{"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", "127.0.0.1:3000"}
	cases := []struct {
		name string
		args string
		code int
		want []string // substrings of stderr (or of stdout+stderr for exit 1)
	}{
		{"bad drain delay", "--drain-delay soon", 2, []string{"--drain-delay", `"soon"`, "duration"}},
		{"bad drain quiet", "--drain-quiet 1x", 2, []string{"--drain-quiet", `"1x"`}},
		{"negative drain timeout", "--drain-timeout -5s", 2, []string{"--drain-timeout", `"-5s"`, "negative"}},
		{"bad app stop timeout", "--app-stop-timeout ages", 2, []string{"--app-stop-timeout", `"ages"`}},
		{"bad restart backoff", "--app-restart-backoff 1parsec -- /bin/true", 2, []string{"--app-restart-backoff", `"1parsec"`}},
		{"drain delay past the default timeout", "--drain-delay 40s", 2,
			[]string{"--drain-delay 40s", "--drain-timeout (default) 30s"}},
		{"child without a command", "--app-stop child", 2, []string{"--app-stop", "child", "--"}},
		{"nothing after --", "--", 2, []string{"nothing after --"}},
		{"restart without a child", "--app-restart always", 2, []string{"--app-restart", `"always"`, "child"}},
		{"command with another strategy", "--app-stop none -- /bin/true", 2, []string{"--app-stop", `"none"`, "--"}},
		{"unknown strategy", "--app-stop kill", 2, []string{"--app-stop", `"kill"`}},
		{"unknown restart policy", "--app-restart sometimes -- /bin/true", 2, []string{"--app-restart", `"sometimes"`}},
		{"bad stop signal", "--app-stop-signal SIGFOO -- /bin/true", 2, []string{"--app-stop-signal", "SIGFOO"}},
		{"pid without a pid", "--app-stop pid", 2, []string{"--app-stop", "pid", "--app-pidfile"}},
		{"http without a URL", "--app-stop http --app-stop-url ftp://app/stop", 2, []string{"--app-stop-url", `"ftp://app/stop"`}},
		{"command without a command", "--app-stop command", 2, []string{"--app-stop-command"}},
		{"negative restart limit", "--app-restart-limit -1 -- /bin/true", 2, []string{"--app-restart-limit", `"-1"`}},
		{"app command that does not exist", "-- /nonexistent/bin/my-app --port 3000", 1, []string{"/nonexistent/bin/my-app"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"run"}, free...)
			args = append(args, strings.Fields(tc.args)...)
			r := runOnce(t, nil, args...)
			if r.code != tc.code {
				t.Errorf("tidegate %s: exit code %d, want %d\nstdout: %s\nstderr: %s", tc.args, r.code, tc.code, r.stdout, r.stderr)
			}
			out := r.stderr
			if tc.code == 1 {
				out = r.stdout + r.stderr // a runtime failure is logged
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("tidegate %s: the message does not name %q:\nstdout: %s\nstderr: %s", tc.args, w, r.stdout, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("stderr has a panic or stack trace:\n%s", r.stderr)
			}
			if tc.code == 2 && strings.Contains(r.stdout, "phase changed") {
				t.Errorf("tidegate started despite the bad input:\n%s", r.stdout)
			}
		})
	}
}
