// Package attack runs hostile clients against the real tidegate binary and
// checks one invariant per connection: whatever a client does, tidegate's
// memory per connection stays under a documented bound, and a connection
// that holds no request is closed within the documented timeout.
//
// TestMain builds ./cmd/tidegate once. Each row of TestAttackInvariantPerConnection
// starts a fresh tidegate on 127.0.0.1 in front of an app inside the test
// (a generated 1 GiB body, a fast answer, a slow one), measures a baseline,
// runs one kind of hostile client on a number of connections, and reports
// on one greppable line per row (prefix "attack row="):
//
//   - rss_growth_kib: the resident set (VmRSS, and VmHWM for peaks between
//     polls) above the baseline while the clients ran;
//   - heap_peak_growth_kib: go_memstats_heap_inuse_bytes from the admin
//     listener's /metrics above the baseline; more precise than the RSS, which
//     holds freed pages until the Go runtime's scavenger returns them;
//   - heap_after_kib, rss_after_kib: the same after the clients went and
//     two forced collections (GET /debug/pprof/heap?gc=1 on the admin
//     listener; debug.FreeOSMemory cannot be called across processes, so the
//     RSS is polled for a bounded time and reported, not asserted);
//   - lifetime_max_ms: the longest time from connect (or from the last
//     answer, for idle keep-alive connections) until tidegate closed the
//     connection, and release_ms: from the client going until tidegate's
//     tidegate_connections_active is back to zero.
//
// The bound, with the constants of bound_test.go (documented in
// docs/reliability.md):
//
//	rss_growth ≤ runtimeSlack + perConn × (connections + streams)
//	             + h2 connections × (h2ConnWindow + h2SendBuffer)
//
// perConn is 256 KiB (goroutines, read and write buffers, a request head up
// to --max-header-bytes, the body copy buffer, the app connection's
// buffers); h2ConnWindow (1 MiB) is what a client may send ahead on an
// HTTP/2 connection, h2SendBuffer what tidegate queues for one before its
// writers wait; runtimeSlack (16 MiB) is the Go runtime's own growth (GC
// pacing lets the heap reach twice the live heap before a collection).
//
// Lifetimes: a connection with no request (a slow or unfinished head, an
// h2c preface, an unfinished header block) is closed within
// --read-header-timeout + lifetimeSlack, an idle keep-alive connection
// within --idle-timeout + lifetimeSlack. A connection that holds a request
// (a client that never reads a large answer) is not timed out: it is
// bounded by the memory bound and by --max-connections.
//
// The package runs in `make test` (each row a few seconds). With
// TIDEGATE_ATTACK_LONG=1 (`make test-attack`) every row uses more
// connections, longer holds and bigger floods. Linux only: it reads
// /proc/PID/status.
package attack
