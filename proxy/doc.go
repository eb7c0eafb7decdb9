// Package proxy is tidegate's data plane: it accepts client connections,
// forwards HTTP/1.1 requests to the app over a pooled transport, and knows at
// every moment how many requests and connections are in flight.
//
// Invariants:
//   - Every request that enters Handler.ServeHTTP is counted in the Tracker
//     until it leaves, whatever the outcome (success, upstream error, client
//     gone, aborted body); every client connection is counted from accept to
//     close or hijack.
//   - Request and response bodies are streamed, never buffered whole: each
//     write from the app is flushed to the client at once.
//   - A failed request gets a short plain-text answer that names a Reason and
//     never carries Go error text; the Reason is the metric label and the
//     log field.
//   - Every request forwarded to the app carries a Via entry naming the
//     Handler; one that arrives with it, or with more than MaxHops
//     tidegate entries, is answered 508 and never forwarded (loop.go).
//   - Requests whose User-Agent marks a health checker are counted in flight
//     but never move LastActivity.
//
// The package knows nothing of signals, probes or the lifecycle: the
// composition root (cmd/tidegate) decides when to stop accepting and reads
// the Tracker to know when the work is done.
package proxy
