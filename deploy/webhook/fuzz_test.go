package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// FuzzAdmission: whatever the body, the handler does not panic (a
// recovered panic would be a 500) and answers a well-formed AdmissionReview
// v1; a response that allows with a patch carries a patch that applies.
func FuzzAdmission(f *testing.F) {
	f.Add(reviewBody(f, "u", admissionv1.Create, "Pod", []byte(podJSON), false))
	f.Add(reviewBody(f, "u", admissionv1.Update, "Pod", []byte(podJSON), true))
	f.Add(reviewBody(f, "u", admissionv1.Create, "Pod", []byte(`{"metadata":{"annotations":{"tidegate.io/inject":"true","tidegate.io/app-port":"9"}},"spec":{"containers":[{"name":"a","ports":[{"containerPort":9}]}]}}`), false))
	f.Add(reviewBody(f, "u", admissionv1.Create, "Pod", []byte(`{"spec":{}}`), false))
	f.Add(reviewBody(f, "u", admissionv1.Create, "Pod", []byte(`null`), false))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"kind":"Pod"},"operation":"CREATE","object":[]}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	s, err := New(Options{Params: fixedParams()})
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, PathMutate, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusInternalServerError {
			t.Fatalf("500 (a panic) for %q: %s", body, rec.Body)
		}
		var ar admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &ar); err != nil || ar.APIVersion != admissionV1 || ar.Kind != "AdmissionReview" || ar.Response == nil {
			t.Fatalf("malformed answer %d %s (%v) for %q", rec.Code, rec.Body, err, body)
		}
		if rec.Code != http.StatusOK && ar.Response.Allowed {
			t.Fatalf("status %d and allowed for %q", rec.Code, body)
		}
		if !ar.Response.Allowed && (ar.Response.Result == nil || ar.Response.Result.Message == "") {
			t.Fatalf("refused without a reason: %s for %q", rec.Body, body)
		}
		if len(ar.Response.Patch) > 0 {
			var in admissionv1.AdmissionReview
			if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
				t.Fatalf("a patch for a body that is no review: %q", body)
			}
			if _, err := applyPatch(in.Request.Object.Raw, ar.Response.Patch); err != nil {
				t.Fatalf("patch %s does not apply to %s: %v", ar.Response.Patch, in.Request.Object.Raw, err)
			}
		}
	})
}
