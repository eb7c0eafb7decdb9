package webhook

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/tidegate/tidegate/test/wait"
)

// heldBody is a request body that sends nothing until released: a client
// that announced a big AdmissionReview and sends it slowly.
type heldBody struct{ release chan struct{} }

func (b heldBody) Read([]byte) (int, error) { <-b.release; return 0, io.EOF }

func admission(s *Server, body io.Reader, length int64) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, PathMutate, body)
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = length
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	return rec
}

// A few big AdmissionReviews at once, which anything reaching the Service
// may send, cannot make the injector hold more than BodyBudgetBytes of
// them: another big one waits MaxAdmissionWait and is answered 503, while
// a pod-sized one still fits, and the big one passes once there is room.
func TestBodyBudgetBoundsConcurrentBodies(t *testing.T) {
	s, err := New(Options{Params: fixedParams()})
	if err != nil {
		t.Fatal(err)
	}
	held := heldBody{release: make(chan struct{})}
	first := make(chan int, 1)
	go func() { first <- admission(s, held, MaxBodyBytes).Code }()
	wait.Until(t, 10*time.Second, "the first request holds its share", func() (bool, string) {
		s.budget.mu.Lock()
		defer s.budget.mu.Unlock()
		return s.budget.free == BodyBudgetBytes-MaxBodyBytes, "free bytes"
	})

	small := reviewBody(t, "small", admissionv1.Create, "Pod", []byte(podJSON), false)
	big := append(bytes.Clone(small), bytes.Repeat([]byte(" "), 2<<20)...) // JSON allows trailing blanks
	start := time.Now()
	if rec := admission(s, bytes.NewReader(big), int64(len(big))); rec.Code != http.StatusServiceUnavailable ||
		!bytes.Contains(rec.Body.Bytes(), []byte("busy")) {
		t.Errorf("a second big request while the first holds the budget: %d %s, want 503 busy", rec.Code, rec.Body)
	}
	if took := time.Since(start); took < MaxAdmissionWait {
		t.Errorf("the 503 came after %s: want it after waiting MaxAdmissionWait %s", took, MaxAdmissionWait)
	}
	if rec := admission(s, bytes.NewReader(small), int64(len(small))); rec.Code != http.StatusOK {
		t.Errorf("a pod-sized request beside the held one: %d %s", rec.Code, rec.Body)
	}

	close(held.release)
	if code := <-first; code != http.StatusBadRequest {
		t.Errorf("the held request, cut short: %d, want 400", code)
	}
	if rec := admission(s, bytes.NewReader(big), int64(len(big))); rec.Code != http.StatusOK {
		t.Errorf("the big request once the budget is free: %d %s", rec.Code, rec.Body)
	}
	if s.budget.free != BodyBudgetBytes {
		t.Errorf("%d bytes free after every request ended: want all %d back", s.budget.free, BodyBudgetBytes)
	}
}

// Waiters are served in order, and one that gives up leaves no bytes
// taken and lets the next one in.
func TestBodyBudgetOrderAndGivingUp(t *testing.T) {
	b := newBodyBudget(10)
	if !b.acquire(context.Background(), 8) {
		t.Fatal("8 of 10 free bytes: not granted")
	}
	gaveUp, cancel := context.WithCancel(context.Background())
	bigDone := make(chan bool, 1)
	go func() { bigDone <- b.acquire(gaveUp, 9) }()
	wait.For(t, "the 9-byte request waits", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.waiters.Len() == 1 })
	smallDone := make(chan bool, 1)
	go func() { smallDone <- b.acquire(context.Background(), 2) }() // fits, but queues behind the 9
	wait.For(t, "the 2-byte request queues behind", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.waiters.Len() == 2 })
	cancel()
	if <-bigDone {
		t.Error("a canceled acquire reported success")
	}
	if !<-smallDone {
		t.Error("the request behind one that gave up was not granted")
	}
	b.release(8)
	b.release(2)
	if b.free != 10 || b.waiters.Len() != 0 {
		t.Errorf("free %d, waiters %d: want 10 and 0", b.free, b.waiters.Len())
	}
}
