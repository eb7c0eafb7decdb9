package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utiljson "k8s.io/apimachinery/pkg/util/json"

	"github.com/tidegate/tidegate/deploy/inject"
)

const (
	admissionV1      = "admission.k8s.io/v1"
	admissionV1beta1 = "admission.k8s.io/v1beta1"
	warningPrefix    = "tidegate: "
)

// outcome is what one admission came to, for the log line and the metrics.
type outcome struct {
	result, reason string
	namespace, pod string
	uid            types.UID
	dryRun         bool
}

// mutateHandler answers AdmissionReviews on path with policy.
func (s *Server) mutateHandler(path string, policy inject.Policy) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		oc := outcome{result: resultError}
		status := http.StatusInternalServerError
		defer func() {
			if v := recover(); v != nil {
				oc.result, oc.reason = resultError, fmt.Sprintf("panic: %v", v)
				status = http.StatusInternalServerError
				s.log.Error("admission handler panicked", zap.String("path", path), zap.Any("panic", v), zap.Stack("stack"))
				writeReview(w, status, errorReview(oc.uid, status, "tidegate webhook: internal error; see the webhook's log"))
			}
			d := time.Since(start)
			s.m.admissions.WithLabelValues(path, oc.result).Inc()
			s.m.duration.WithLabelValues(path).Observe(d.Seconds())
			level := zap.InfoLevel
			if oc.result == resultError {
				level = zap.WarnLevel
			}
			s.log.Log(level, "admission", zap.String("path", path), zap.String("namespace", oc.namespace),
				zap.String("pod", oc.pod), zap.String("uid", string(oc.uid)), zap.String("result", oc.result),
				zap.String("reason", oc.reason), zap.Bool("dry_run", oc.dryRun), zap.Int("status", status),
				zap.Duration("duration", d))
		}()
		var review *admissionv1.AdmissionReview
		status, review, oc = s.readAndReview(w, r, policy)
		writeReview(w, status, review)
	})
}

// readAndReview checks the request's form, reads its bounded body and
// answers it.
func (s *Server) readAndReview(w http.ResponseWriter, r *http.Request, policy inject.Policy) (int, *admissionv1.AdmissionReview, outcome) {
	fail := func(code int, msg string) (int, *admissionv1.AdmissionReview, outcome) {
		return code, errorReview("", code, msg), outcome{result: resultError, reason: msg}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return fail(http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q: want application/json (an AdmissionReview)", r.Header.Get("Content-Type")))
	}
	if r.ContentLength > MaxBodyBytes {
		return fail(http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes is larger than the %d bytes an AdmissionReview can be", r.ContentLength, MaxBodyBytes))
	}
	cost := r.ContentLength
	if cost < 0 {
		cost = MaxBodyBytes
	}
	ctx, cancel := context.WithTimeout(r.Context(), MaxAdmissionWait)
	got := s.budget.acquire(ctx, cost)
	cancel()
	if !got {
		return fail(http.StatusServiceUnavailable, fmt.Sprintf("busy: %d bytes of AdmissionReviews in progress did not leave room for this one's %d within %s; the API server applies failurePolicy", BodyBudgetBytes, cost, MaxAdmissionWait))
	}
	defer s.budget.release(cost)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return fail(http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than the %d bytes an AdmissionReview can be", MaxBodyBytes))
	}
	if err != nil {
		return fail(http.StatusBadRequest, fmt.Sprintf("reading the body: %v", err))
	}
	return s.review(body, policy)
}

// review answers one AdmissionReview body: the HTTP status, the review to
// send back, and the outcome. It never panics on any input.
func (s *Server) review(body []byte, policy inject.Policy) (int, *admissionv1.AdmissionReview, outcome) {
	var in admissionv1.AdmissionReview
	// Case-sensitive, as the API server decodes: "Spec" is not "spec".
	if err := utiljson.Unmarshal(body, &in); err != nil {
		msg := fmt.Sprintf("body is not an AdmissionReview: %v", err)
		return http.StatusBadRequest, errorReview("", http.StatusBadRequest, msg), outcome{result: resultError, reason: msg}
	}
	oc := outcome{result: resultError}
	if in.Request != nil {
		oc.uid = in.Request.UID
	}
	bad := func(msg string) (int, *admissionv1.AdmissionReview, outcome) {
		oc.reason = msg
		return http.StatusBadRequest, errorReview(oc.uid, http.StatusBadRequest, msg), oc
	}
	switch {
	case in.APIVersion == admissionV1beta1:
		return bad(admissionV1beta1 + " is not supported: set admissionReviewVersions: [v1] in the MutatingWebhookConfiguration")
	case in.APIVersion != admissionV1 || in.Kind != "AdmissionReview":
		return bad(fmt.Sprintf("apiVersion %q, kind %q: want apiVersion %s, kind AdmissionReview", in.APIVersion, in.Kind, admissionV1))
	case in.Request == nil:
		return bad("AdmissionReview has no request")
	case in.Request.UID == "":
		return bad("request.uid is empty")
	}
	req := in.Request
	oc.namespace = req.Namespace
	oc.dryRun = req.DryRun != nil && *req.DryRun
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" || req.Operation != admissionv1.Create {
		oc.result = resultSkipped
		oc.reason = fmt.Sprintf("%s of %s%s: only pod creation is mutated", req.Operation, kindString(req.Kind), subresource(req.SubResource))
		return http.StatusOK, allowed(req.UID), oc
	}
	if len(req.Object.Raw) == 0 {
		return bad("request.object is empty: a Pod CREATE carries the pod")
	}
	var pod corev1.Pod
	if err := utiljson.Unmarshal(req.Object.Raw, &pod); err != nil {
		return bad(fmt.Sprintf("request.object is not a Pod: %v", err))
	}
	oc.pod = podName(&pod.ObjectMeta)
	if pod.Namespace != "" {
		oc.namespace = pod.Namespace
	}
	// The patch is computed against the pod as the types encode it, so
	// that only inject's changes show up in it (see jsonPatch).
	before, err := json.Marshal(&pod)
	if err != nil {
		return bad(fmt.Sprintf("request.object: %v", err))
	}
	mutated := pod.DeepCopy()
	// Pods made by controllers have no name yet and often no namespace in
	// the object: give inject's messages what the request knows, and take
	// it back out before the diff.
	mutated.Name, mutated.Namespace = oc.pod, oc.namespace
	res, err := inject.InjectPod(&mutated.ObjectMeta, &mutated.Spec, policy, s.params)
	mutated.Name, mutated.Namespace = pod.Name, pod.Namespace
	out := allowed(req.UID)
	for _, w := range res.Warnings {
		out.Response.Warnings = append(out.Response.Warnings, warningPrefix+w)
	}
	if err != nil {
		var ie *inject.Error
		switch {
		case errors.As(err, &ie) && ie.Explicit:
			oc.result, oc.reason = resultDenied, err.Error()
			out.Response.Allowed = false
			out.Response.Result = &metav1.Status{
				Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest,
				Message: fmt.Sprintf("tidegate: pod %s asked for the sidecar (a tidegate.io/ annotation) and cannot have it: %v; fix that field, or remove the pod's tidegate.io/ annotations to run it without tidegate", oc.pod, err),
			}
		case ie != nil:
			oc.result, oc.reason = resultSkipped, err.Error()
			out.Response.Warnings = append(out.Response.Warnings, warningPrefix+"not injected: "+err.Error())
		default: // not inject's kind of error: a bug; the pod runs as it came
			oc.result, oc.reason = resultError, err.Error()
			out.Response.Warnings = append(out.Response.Warnings, warningPrefix+"not injected: internal error: "+err.Error())
		}
		return http.StatusOK, out, oc
	}
	after, err := json.Marshal(mutated)
	if err != nil {
		return bad(fmt.Sprintf("encoding the injected pod: %v", err))
	}
	patch, err := jsonPatch(req.Object.Raw, before, after)
	if err != nil {
		return bad(fmt.Sprintf("patch: %v", err))
	}
	if patch == nil {
		oc.result, oc.reason = resultSkipped, res.Skipped
		if oc.reason == "" {
			oc.reason = "unchanged"
		}
		return http.StatusOK, out, oc
	}
	pt := admissionv1.PatchTypeJSONPatch
	out.Response.Patch, out.Response.PatchType = patch, &pt
	oc.result = resultInjected
	return http.StatusOK, out, oc
}

// podName is the pod's name, or its generateName while it has none.
func podName(m *metav1.ObjectMeta) string {
	if m.Name != "" {
		return m.Name
	}
	return m.GenerateName
}

func kindString(k metav1.GroupVersionKind) string {
	if k.Group == "" {
		return k.Version + " " + k.Kind
	}
	return k.Group + "/" + k.Version + " " + k.Kind
}

func subresource(s string) string {
	if s == "" {
		return ""
	}
	return " (subresource " + s + ")"
}

func allowed(uid types.UID) *admissionv1.AdmissionReview {
	return &admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionV1, Kind: "AdmissionReview"},
		Response: &admissionv1.AdmissionResponse{UID: uid, Allowed: true},
	}
}

// errorReview is the answer to a request that could not be reviewed.
func errorReview(uid types.UID, code int, msg string) *admissionv1.AdmissionReview {
	r := allowed(uid)
	r.Response.Allowed = false
	r.Response.Result = &metav1.Status{Status: metav1.StatusFailure, Code: int32(code), Message: "tidegate webhook: " + msg,
		Reason: metav1.StatusReason(strings.ReplaceAll(http.StatusText(code), " ", ""))}
	return r
}

func writeReview(w http.ResponseWriter, status int, r *admissionv1.AdmissionReview) {
	b, err := json.Marshal(r)
	if err != nil { // cannot happen with these types; answer something well-formed
		status = http.StatusInternalServerError
		b = []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":false,"status":{"code":500,"message":"tidegate webhook: encoding the answer failed"}}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
