// Package fakeapp is the controllable upstream app of tidegate's end-to-end
// tests: one http.Handler whose endpoints stream, stall, hang, fail and echo
// on demand, and which reports what it saw to the test through channels and
// methods, so that tests wait on events, never on sleeps.
//
// Endpoints:
//
//	/echo                 the request as the app saw it, as JSON (Echo)
//	/upload               reads the body as it streams; answers its SHA-256 and size (Upload);
//	                      reports the first bytes' arrival on BodyStarted
//	/download?n=&seed=&chunked=1
//	                      n deterministic bytes (Pattern), with Content-Length unless chunked=1
//	/chunks?n=&size=      n chunks of size bytes, each flushed; between chunks it waits for Step
//	/sse?n=&interval=     n server-sent events, each flushed; interval is a duration or "step"
//	/slow?d=              answers after d (a timer; gives up when the request is cancelled);
//	                      reports on SlowStarted
//	/hang                 never answers; reports on HangStarted and, once the request's
//	                      context is cancelled, on HangCanceled
//	/status?code=         answers with that status code
//	/trailers             a chunked body followed by trailers X-Body-Sha256 and X-Chunks
//	/expect?continue_headers=
//	                      with "X-Reject: 1" answers 417 without reading the body
//	                      (for Expect: 100-continue); otherwise echoes the body, first
//	                      sending its own 100 Continue carrying that many headers if asked
//
// Invariants: every handler returns when its request's context ends or the
// App is closed, so that closing the server never hangs; every report is a
// non-blocking send on a small buffered channel, so that a test that does not
// listen never stalls the app.
//
// The same app as a real process, which tidegate can supervise, signal and
// restart, is the command in cmd/fakeapp.
package fakeapp
