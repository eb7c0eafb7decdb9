package webhook

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/tidegate/tidegate/deploy/inject"
)

// BenchmarkReview is one admission of a ReplicaSet's pod, from the request
// body to the answer with its JSONPatch, without TLS or HTTP: the CPU the
// webhook spends per pod (test/bench -mode webhook measures it over TLS).
func BenchmarkReview(b *testing.B) {
	s, err := New(Options{Params: fixedParams()})
	if err != nil {
		b.Fatal(err)
	}
	body := reviewBody(b, "uid-1", admissionv1.Create, "Pod", []byte(podJSON), false)
	b.ReportAllocs()
	for b.Loop() {
		if code, rev, _ := s.review(body, inject.InjectUnlessRefused); code != 200 || rev.Response == nil || rev.Response.Patch == nil {
			b.Fatalf("review: %d %+v", code, rev)
		}
	}
}
