//go:build linux

package attack

import "time"

// The memory bound of a row, in bytes of resident set above the baseline:
//
//	runtimeSlack + perConn × (connections + streams)
//	             + h2 connections × (h2ConnWindow + h2SendBuffer)
//
// docs/reliability.md states the same formula; keep them together.
const (
	// perConn is the documented bound of one client connection, or of one
	// HTTP/2 stream relayed to its own app connection: goroutine stacks,
	// the read buffer (4 KiB on the fast path, net/http's 4 KiB bufio), a
	// request head up to --max-header-bytes (64 KiB by default, the value
	// the rows run with), the 64 KiB body copy buffer, the client write
	// buffer (4 KiB), the app connection's read and write buffers (16 KiB
	// and 4 KiB), and the kernel-facing bookkeeping Go keeps per socket.
	perConn = 256 << 10

	// h2ConnWindow is proxy's h2ConnWindow: the receive window tidegate
	// announces on an HTTP/2 connection, so what a client may send ahead
	// (request bodies) before tidegate has passed it on.
	h2ConnWindow = 1 << 20

	// h2SendBuffer is what tidegate's HTTP/2 server may queue for one client
	// connection (response data and control frames) before its writers wait
	// for the client to read and a flood of unacknowledged control frames
	// closes the connection (issue 20, point 1).
	h2SendBuffer = 1 << 20

	// runtimeSlack is the Go runtime's own growth under load, not owed to
	// any connection: GC pacing (GOGC=100) lets the heap reach twice the
	// live heap before a collection, plus per-P caches and stacks of the
	// scheduler's threads.
	runtimeSlack = 16 << 20

	// heapAfterSlack is how far go_memstats_heap_inuse_bytes may stay above
	// its baseline once the clients are gone and two collections ran: what
	// tidegate keeps for the next client (pooled app connections, grown
	// maps).
	heapAfterSlack = 4 << 20
)

// Timeouts the rows run tidegate with, and the allowance on top of each for
// timers firing late on a busy machine.
const (
	readHeaderTimeout = 2 * time.Second // --read-header-timeout
	idleTimeout       = 5 * time.Second // --idle-timeout
	maxHeaderBytes    = "64KiB"         // --max-header-bytes (its default)
	lifetimeSlack     = 750 * time.Millisecond

	// releaseBound is how soon after a client goes (closes or resets its
	// connection) tidegate must have closed its side and stopped counting
	// the connection.
	releaseBound = time.Second
)

// memBound returns a row's bound in bytes.
func memBound(conns, streams int, h2 bool) int64 {
	b := int64(runtimeSlack) + int64(perConn)*int64(conns+streams)
	if h2 {
		b += int64(conns) * (h2ConnWindow + h2SendBuffer)
	}
	return b
}
