// Package drain owns the sidecar's lifecycle: the phases it goes through from
// start to exit, and (as the drain is built out) how SIGTERM becomes "fail
// readiness, keep serving while load balancers notice, drain to zero, then
// stop the app".
//
// Invariants:
//   - Phases only move forward: starting → serving → draining → closing →
//     stopping_app → stopped. A phase may be skipped, never revisited, with
//     one exception: an explicit undrain (POST /undrain) moves draining back
//     to serving. Nothing else reopens readiness.
//   - The app is signalled only after the listeners have closed and what was
//     in flight has finished or been cut: it never sees a request it cannot
//     finish.
//   - The current phase is always exported as tidegate_phase{phase} (1 for the
//     current one) and readable without blocking the data path.
//
// drain never imports proxy or healthz; the composition root in cmd/tidegate
// hands it what it needs through small interfaces.
package drain
