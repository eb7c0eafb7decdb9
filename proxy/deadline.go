package proxy

import (
	"net"
	"time"
)

// readDeadline is a connection's read deadline as last set through it.
// Setting one costs two clock reads and the runtime's timer work, and a
// busy connection waits once a request: arm lets a wait keep the deadline
// set before it when that one ends the wait in time, so that such a
// connection sets its timer once in a while. Used for the client
// connection's idle wait (fastConn) and for the wait for an answer on an
// app connection (h1Conn).
type readDeadline struct {
	nc net.Conn
	at time.Time // the deadline set on nc; zero: none
}

// set sets nc's read deadline to d (zero: none).
func (r *readDeadline) set(d time.Time) {
	if d.IsZero() && r.at.IsZero() {
		return
	}
	_ = r.nc.SetReadDeadline(d)
	r.at = d
}

// arm makes nc's read deadline fall between d and d+slack: it keeps the
// deadline set when that does, and sets d+slack when it does not. A wait
// so bounded never ends before d, and at most slack after it.
func (r *readDeadline) arm(d time.Time, slack time.Duration) {
	if !r.at.IsZero() && !r.at.Before(d) && !r.at.After(d.Add(slack)) {
		return
	}
	r.set(d.Add(slack))
}
