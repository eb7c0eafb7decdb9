package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzInject checks checkInjection on random documents, seeded from
// testdata.
func FuzzInject(f *testing.F) {
	for _, file := range goldenInputs(f) {
		f.Add(readJSON(f, file))
	}
	f.Add([]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}],"lifecycle":{"preStop":{"sleep":{"seconds":1}}}}]}}`))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[null,{"apiVersion":"v1","kind":"List","items":[]}]}`))
	f.Fuzz(checkInjection)
}

// FuzzInjectFields builds a pod from fuzzed annotation values, ports and
// hooks, which random bytes rarely reach, and checks what FuzzInject does.
func FuzzInjectFields(f *testing.F) {
	f.Add("mode", "classic", "http", int32(8080), "http", "sleep", int64(3))
	f.Add("app-port", "8080", "", int32(8080), "8080", "exec", int64(0))
	f.Add("drain-timeout", "1m", "web", int32(15080), "web", "httpGet", int64(-1))
	f.Add("cpu-limit", "0", "http", int32(0), "x", "tcpSocket", int64(1))
	f.Fuzz(func(t *testing.T, key, value, portName string, port int32, probePort, hook string, n int64) {
		var lifecycle map[string]any
		switch hook {
		case "sleep":
			lifecycle = map[string]any{"preStop": map[string]any{"sleep": map[string]any{"seconds": n}}}
		case "exec":
			lifecycle = map[string]any{"preStop": map[string]any{"exec": map[string]any{"command": []string{value}}}}
		case "httpGet":
			lifecycle = map[string]any{"preStop": map[string]any{"httpGet": map[string]any{"path": value, "port": probePort, "host": portName}},
				"postStart": map[string]any{"tcpSocket": map[string]any{"port": portName}}}
		case "tcpSocket":
			lifecycle = map[string]any{"preStop": map[string]any{"tcpSocket": map[string]any{"port": port}}}
		}
		c := map[string]any{"name": "app", "image": "a",
			"ports":          []any{map[string]any{"name": portName, "containerPort": port}},
			"readinessProbe": map[string]any{"httpGet": map[string]any{"path": "/r", "port": probePort}, "periodSeconds": n},
			"livenessProbe":  map[string]any{"grpc": map[string]any{"port": port}},
		}
		if lifecycle != nil {
			c["lifecycle"] = lifecycle
		}
		doc, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": "p", "annotations": map[string]string{"tidegate.io/" + key: value}},
			"spec":     map[string]any{"containers": []any{c}}})
		if err != nil {
			t.Fatal(err)
		}
		checkInjection(t, doc)
	})
}

// checkInjection: Inject never panics and returns only *Error; when it
// injects, the output decodes strictly, injecting it again changes nothing,
// and uninjecting it gives back the input.
func checkInjection(t *testing.T, doc []byte) {
	out, res, err := Inject(doc, InjectUnlessRefused, testParams())
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || e.Msg == "" {
			t.Fatalf("not an *Error with a message: %#v", err)
		}
		return
	}
	if !res.Injected {
		if !bytes.Equal(out, doc) {
			t.Fatalf("not injected (%q) but changed:\n%s", res.Skipped, out)
		}
	} else {
		if _, err := typedOf(out); err != nil {
			t.Fatalf("output does not decode strictly: %v\n%s", err, out)
		}
		again, res2, err := Inject(out, InjectUnlessRefused, testParams())
		if err != nil || res2.Injected || !bytes.Equal(again, out) {
			t.Fatalf("reinjection changed the output: %v %+v\n%s", err, res2, again)
		}
		back, changed, err := Uninject(out)
		if err != nil || !changed {
			t.Fatalf("uninject: %v %v", changed, err)
		}
		if eq, err := semanticEqual(back, doc); err != nil || !eq {
			t.Fatalf("Uninject(Inject(x)) != x (%v):\nin:  %s\nout: %s\nback: %s", err, doc, out, back)
		}
	}
	if _, _, err := Uninject(doc); err != nil {
		var e *Error
		if !errors.As(err, &e) || e.Msg == "" {
			t.Fatalf("Uninject: not an *Error with a message: %#v", err)
		}
	}
}
