package webhook

import (
	"container/list"
	"context"
	"sync"
)

// bodyBudget bounds the AdmissionReview bytes the server holds at once:
// a request takes its Content-Length (MaxBodyBytes when it sends none)
// before its body is read and gives it back when its answer is ready.
// Decoding, injecting and diffing a pod takes some 20-40 times its size,
// so without this bound a few concurrent 3 MiB bodies, which anything that
// reaches the Service may send, kill the injector at its memory limit
// (and with failurePolicy Ignore, every pod is then created without
// tidegate). Requests wait in order, each at most MaxAdmissionWait.
type bodyBudget struct {
	mu      sync.Mutex
	free    int64
	waiters list.List // of *budgetWaiter, first come first served
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed when the bytes are granted
}

func newBodyBudget(n int64) *bodyBudget { return &bodyBudget{free: n} }

// acquire takes n bytes (n ≤ the budget), waiting until ctx ends; it
// reports whether it got them.
func (b *bodyBudget) acquire(ctx context.Context, n int64) bool {
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.free >= n {
		b.free -= n
		b.mu.Unlock()
		return true
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	e := b.waiters.PushBack(w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return true
	case <-ctx.Done():
	}
	b.mu.Lock()
	select {
	case <-w.ready: // granted meanwhile: give it back
		b.free += n
	default:
		b.waiters.Remove(e)
	}
	b.grantLocked() // the head may have gone: the next may fit
	b.mu.Unlock()
	return false
}

// release gives back n bytes acquired before.
func (b *bodyBudget) release(n int64) {
	b.mu.Lock()
	b.free += n
	b.grantLocked()
	b.mu.Unlock()
}

func (b *bodyBudget) grantLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*budgetWaiter)
		if b.free < w.n {
			return
		}
		b.free -= w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}
