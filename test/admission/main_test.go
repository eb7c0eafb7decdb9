package admission

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tidegate/tidegate/test/kubeenv"
)

// cluster is the package's one API server: started by the first test that
// needs it, stopped once all tests are done.
var cluster kubeenv.Shared

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }

func intOrName(name string) intstr.IntOrString { return intstr.FromString(name) }

// renderKustomize is `kubectl kustomize dir` with the cached kubectl, split
// into its YAML documents.
func renderKustomize(t *testing.T, dir string) [][]byte {
	t.Helper()
	kubectl := kubeenv.BinariesIn(kubeenv.CacheRoot()).Kubectl
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr)
	}
	var docs [][]byte
	for _, d := range bytes.Split(out, []byte("\n---\n")) {
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

// serveAnnotator admits every pod, adding annotatorKey: yes with a
// JSONPatch when it is not there yet.
func serveAnnotator(w http.ResponseWriter, r *http.Request) {
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(io.LimitReader(r.Body, 3<<20)).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	var pod struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	if err := json.Unmarshal(review.Request.Object.Raw, &pod); err != nil {
		http.Error(w, "not a pod: "+err.Error(), http.StatusBadRequest)
		return
	}
	if pod.Metadata.Annotations[annotatorKey] == "" {
		var patch []byte
		if pod.Metadata.Annotations == nil {
			patch = []byte(`[{"op":"add","path":"/metadata/annotations","value":{"test.tidegate.io/annotated":"yes"}}]`)
		} else {
			patch = []byte(`[{"op":"add","path":"/metadata/annotations/test.tidegate.io~1annotated","value":"yes"}]`)
		}
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
	}
	review.Response = resp
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
}
