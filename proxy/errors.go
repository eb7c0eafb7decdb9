package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
)

// Reason says why a request could not be proxied. Its string is the value of
// the reason label of tidegate_upstream_errors_total and of the "reason" log
// field, so the set is small and stable.
type Reason string

// Reasons for a failed request. The status each maps to is in failure().
const (
	ReasonConnectRefused  Reason = "connect_refused"  // 502: nothing listens on the app's port or socket
	ReasonConnectTimeout  Reason = "connect_timeout"  // 504: the app did not accept within the dial timeout
	ReasonConnectError    Reason = "connect_error"    // 502: any other error while connecting
	ReasonResponseTimeout Reason = "response_timeout" // 504: no response headers within the timeout
	ReasonUpstreamReset   Reason = "upstream_reset"   // 502: the app closed or reset the connection before answering
	ReasonUpstreamError   Reason = "upstream_error"   // 502: anything else on the app's side

	// Not upstream errors (not counted in tidegate_upstream_errors_total):
	ReasonBodyTooLarge   Reason = "body_too_large"   // 413: the request body exceeds the configured maximum
	ReasonClientCanceled Reason = "client_canceled"  // 499: the client went away first; nothing is written
	ReasonLoop           Reason = "loop"             // 508: the request already passed through this tidegate, or through too many (loop.go)
	ReasonBadRequestBody Reason = "bad_request_body" // 400: the client's body could not be read (malformed chunked encoding)
)

// clientBodyError is a failure to read the client's request body while it
// was sent to the app: the client's fault (a malformed chunk), not the
// app's, so it is answered 400, and the request is never sent again.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// UpstreamReasons lists the reasons counted as upstream errors, so that their
// counters can be created at zero and plotted before the first failure.
func UpstreamReasons() []Reason {
	return []Reason{ReasonConnectRefused, ReasonConnectTimeout, ReasonConnectError,
		ReasonResponseTimeout, ReasonUpstreamReset, ReasonUpstreamError}
}

// StatusClientClosed is the status recorded (never sent) for requests whose
// client went away before the response: nginx's 499.
const StatusClientClosed = 499

type failure struct {
	status   int
	reason   Reason
	upstream bool   // counts as an upstream error
	message  string // the body the client sees: short, stable, no Go error text
}

// body is the text the client gets with a failure's status.
func (f failure) body() string { return "tidegate: " + f.message + "\n" }

// classify maps an error from forwarding a request to what the client sees.
// ctx is the inbound request's context.
func classify(ctx context.Context, err error) failure {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return failure{http.StatusRequestEntityTooLarge, ReasonBodyTooLarge, false, "request body too large"}
	}
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return failure{StatusClientClosed, ReasonClientCanceled, false, "client closed request"}
	}
	var cbe *clientBodyError
	if errors.As(err, &cbe) {
		return failure{http.StatusBadRequest, ReasonBadRequestBody, false, "malformed request body"}
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		switch {
		case op.Timeout():
			return failure{http.StatusGatewayTimeout, ReasonConnectTimeout, true, "upstream connect timeout"}
		case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOENT):
			return failure{http.StatusBadGateway, ReasonConnectRefused, true, "upstream refused the connection"}
		default:
			return failure{http.StatusBadGateway, ReasonConnectError, true, "upstream connect error"}
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return failure{http.StatusGatewayTimeout, ReasonResponseTimeout, true, "upstream response timeout"}
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || isEOF(err) {
		return failure{http.StatusBadGateway, ReasonUpstreamReset, true, "upstream closed the connection before responding"}
	}
	return failure{http.StatusBadGateway, ReasonUpstreamError, true, "upstream error"}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}
