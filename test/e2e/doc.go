// Package e2e is tidegate's black-box end-to-end suite: it builds the real
// binary once, runs it as a child process per test in front of the
// controllable app of test/fakeapp, and asserts only what a client, the app,
// the logs and the admin endpoints see on the wire.
//
// Run it with `go test -race ./test/e2e` from anywhere in the repository.
// With TIDEGATE_E2E_RACE=1 the binary under test is built with the race
// detector too, and any data race it reports fails the test that ran it.
//
// TestMain also builds test/fakeapp/cmd/fakeapp, the controllable app as a
// real process, for the tests of the lifecycle: tidegate supervises it as
// its child, or stops it by pid, HTTP or command. TestRollingRestart runs
// Debian's haproxy (/usr/sbin/haproxy) in front of two instances; without
// it that test is skipped, unless TIDEGATE_REQUIRE_TOOLS=1 makes a missing
// tool a failure.
//
// Rules the suite keeps: traffic stays on 127.0.0.1; nothing waits with
// sleeps (tests wait on channels or poll with a deadline); every loop is
// bounded in count and time; every child process is killed by the test's
// cleanup if the test did not stop it, and its output is shown when the
// test fails.
package e2e
