package kubeenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Bounds of the client: one request (the caller's context may end it
// sooner), and the body of one response.
const (
	requestTimeout  = 30 * time.Second
	maxResponseBody = 32 << 20
)

// Option changes one request: its query (dryRun, fieldManager, a label
// selector) or what is kept from its response (warnings).
type Option func(*request)

type request struct {
	query    url.Values
	warnings *[]string
}

// DryRun makes the request dryRun=All: admission runs, webhooks included
// (they see dryRun: true), and nothing is stored.
func DryRun() Option { return func(r *request) { r.query.Set("dryRun", "All") } }

// FieldManager names the writer (fieldManager=name).
func FieldManager(name string) Option {
	return func(r *request) { r.query.Set("fieldManager", name) }
}

// LabelSelector filters a list (labelSelector=sel, e.g. "app=web").
func LabelSelector(sel string) Option {
	return func(r *request) { r.query.Set("labelSelector", sel) }
}

// Warnings appends the response's warnings (the Warning headers: from the
// API server and from admission webhooks) to *dst.
func Warnings(dst *[]string) Option { return func(r *request) { r.warnings = dst } }

// StatusError is the API server's answer to a request that failed: its
// HTTP status and the metav1.Status it sent (Message says why: a webhook's
// denial, a validation error).
type StatusError struct {
	Method string
	Path   string
	Code   int
	Status metav1.Status
}

func (e *StatusError) Error() string {
	reason := string(e.Status.Reason)
	if reason == "" {
		reason = http.StatusText(e.Code)
	}
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Code, reason, e.Status.Message)
}

// Code is the HTTP status of err's StatusError, 0 when err is not one.
func Code(err error) int {
	if se, ok := errors.AsType[*StatusError](err); ok {
		return se.Code
	}
	return 0
}

// IsNotFound reports whether err is the API server's 404.
func IsNotFound(err error) bool { return Code(err) == http.StatusNotFound }

// Path is the REST path of a resource: Path("apps/v1", "ns", "deployments")
// is /apis/apps/v1/namespaces/ns/deployments; Path("v1", "", "namespaces",
// "x") is /api/v1/namespaces/x. An empty namespace means cluster scope.
func Path(apiVersion, namespace, resource string, name ...string) string {
	var b strings.Builder
	if strings.Contains(apiVersion, "/") {
		b.WriteString("/apis/")
	} else {
		b.WriteString("/api/")
	}
	b.WriteString(apiVersion)
	if namespace != "" {
		b.WriteString("/namespaces/" + url.PathEscape(namespace))
	}
	b.WriteString("/" + resource)
	for _, n := range name {
		b.WriteString("/" + url.PathEscape(n))
	}
	return b.String()
}

// Create POSTs obj (JSON) to path, a collection, and decodes the stored (or,
// with DryRun, the would-be stored) object into out unless out is nil.
func (c *Cluster) Create(ctx context.Context, path string, obj, out any, opts ...Option) error {
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encode %T for POST %s: %w", obj, path, err)
	}
	return c.Do(ctx, http.MethodPost, path, body, "application/json", out, opts...)
}

// Update PUTs obj to path, an object.
func (c *Cluster) Update(ctx context.Context, path string, obj, out any, opts ...Option) error {
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encode %T for PUT %s: %w", obj, path, err)
	}
	return c.Do(ctx, http.MethodPut, path, body, "application/json", out, opts...)
}

// Get decodes the object at path into out.
func (c *Cluster) Get(ctx context.Context, path string, out any, opts ...Option) error {
	return c.Do(ctx, http.MethodGet, path, nil, "", out, opts...)
}

// List decodes the collection at path (e.g. a *corev1.PodList) into out.
func (c *Cluster) List(ctx context.Context, path string, out any, opts ...Option) error {
	return c.Do(ctx, http.MethodGet, path, nil, "", out, opts...)
}

// Patch sends patch of type pt (types.JSONPatchType, MergePatchType,
// StrategicMergePatchType, ApplyPatchType) to path.
func (c *Cluster) Patch(ctx context.Context, path string, pt types.PatchType, patch []byte, out any, opts ...Option) error {
	return c.Do(ctx, http.MethodPatch, path, patch, string(pt), out, opts...)
}

// Delete deletes the object at path.
func (c *Cluster) Delete(ctx context.Context, path string, opts ...Option) error {
	return c.Do(ctx, http.MethodDelete, path, nil, "", nil, opts...)
}

// Do sends one request with the admin token. A status other than 2xx is a
// *StatusError; a 2xx body is decoded into out unless out is nil.
func (c *Cluster) Do(ctx context.Context, method, path string, body []byte, contentType string, out any, opts ...Option) error {
	r := request{query: url.Values{}}
	for _, o := range opts {
		o(&r)
	}
	u := c.URL + path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return fmt.Errorf("%s %s: read the response: %w", method, path, err)
	}
	if len(data) > maxResponseBody {
		return fmt.Errorf("%s %s: response longer than %d bytes", method, path, maxResponseBody)
	}
	if r.warnings != nil {
		for _, h := range resp.Header.Values("Warning") {
			*r.warnings = append(*r.warnings, warningText(h))
		}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		se := &StatusError{Method: method, Path: path, Code: resp.StatusCode}
		if json.Unmarshal(data, &se.Status) != nil || se.Status.Kind != "Status" {
			se.Status = metav1.Status{Reason: metav1.StatusReason(http.StatusText(resp.StatusCode)), Message: clip(string(data), 1024)}
		}
		return se
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode into %T: %w", method, path, out, err)
	}
	return nil
}

// warningText is the text of an RFC 7234 Warning header as the API server
// writes it (`299 - "text"`), or the header itself if it is not that form.
func warningText(h string) string {
	code, rest, ok := strings.Cut(h, " ")
	if !ok || code != "299" {
		return h
	}
	_, quoted, ok := strings.Cut(rest, " ")
	if !ok {
		return h
	}
	if s, err := strconv.QuotedPrefix(quoted); err == nil {
		if text, err := strconv.Unquote(s); err == nil {
			return text
		}
	}
	return h
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
