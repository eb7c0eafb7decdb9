package inject

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzInject: Inject never panics and returns only *Error; when it
// injects, the output decodes strictly, injecting it again changes nothing,
// and uninjecting it gives back the input.
func FuzzInject(f *testing.F) {
	for _, file := range goldenInputs(f) {
		f.Add(readJSON(f, file))
	}
	f.Add([]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}],"lifecycle":{"preStop":{"sleep":{"seconds":1}}}}]}}`))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[null,{"apiVersion":"v1","kind":"List","items":[]}]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
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
	})
}
