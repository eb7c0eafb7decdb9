package inject

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite testdata/*.injected.yaml from the current output")

// testToken is the drain token of every golden test.
const testToken = "0123456789abcdef0123456789abcdef"

func testParams() Params {
	return Params{Token: func() (string, error) { return testToken, nil }}
}

// goldenInputs are testdata/*.yaml without the outputs.
func goldenInputs(t testing.TB) []string {
	t.Helper()
	all, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var in []string
	for _, f := range all {
		if !strings.HasSuffix(f, ".injected.yaml") {
			in = append(in, f)
		}
	}
	if len(in) == 0 {
		t.Fatal("no testdata/*.yaml")
	}
	return in
}

func readJSON(t testing.TB, file string) []byte {
	t.Helper()
	y, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return j
}

// golden is what a golden file holds: the result as comments, then the
// output.
func golden(t testing.TB, out []byte, res Result) []byte {
	t.Helper()
	var b bytes.Buffer
	if res.Skipped != "" {
		b.WriteString("# skipped: " + res.Skipped + "\n")
	}
	for _, w := range res.Warnings {
		b.WriteString("# warning: " + w + "\n")
	}
	y, err := yaml.JSONToYAML(out)
	if err != nil {
		t.Fatal(err)
	}
	b.Write(y)
	return b.Bytes()
}

func TestGolden(t *testing.T) {
	for _, file := range goldenInputs(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			in := readJSON(t, file)
			out, res, err := Inject(in, InjectUnlessRefused, testParams())
			if err != nil {
				t.Fatal(err)
			}
			got := golden(t, out, res)
			want := strings.TrimSuffix(file, ".yaml") + ".injected.yaml"
			if *update {
				if err := os.WriteFile(want, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			w, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to write it)", err)
			}
			if !bytes.Equal(got, w) {
				t.Errorf("output differs from %s (run with -update and review the diff):\n%s", want, got)
			}
			if _, err := typedOf(out); err != nil {
				t.Errorf("output does not decode strictly: %v", err)
			}
		})
	}
}

// TestRoundTrip: Uninject(Inject(x)) is x, field for field, for every
// golden input; an input left alone comes back byte for byte.
func TestRoundTrip(t *testing.T) {
	for _, file := range goldenInputs(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			in := readJSON(t, file)
			out, res, err := Inject(in, InjectUnlessRefused, testParams())
			if err != nil {
				t.Fatal(err)
			}
			if !res.Injected {
				if !bytes.Equal(out, in) {
					t.Fatalf("left alone (%q) but changed:\n%s", res.Skipped, out)
				}
				back, changed, err := Uninject(in)
				if err != nil {
					t.Fatal(err)
				}
				if res.Skipped != SkipAlreadyInjected {
					if changed || !bytes.Equal(back, in) {
						t.Fatalf("Uninject changed an uninjected object:\n%s", back)
					}
					return
				}
				// Already injected: uninject, inject again with the same
				// token, and get the input back.
				if !changed {
					t.Fatal("Uninject did not change an injected object")
				}
				again, res, err := Inject(back, InjectUnlessRefused, testParams())
				if err != nil || !res.Injected {
					t.Fatalf("reinject: %v %+v", err, res)
				}
				if eq, err := genericEqual(again, in); err != nil || !eq {
					t.Fatalf("Inject(Uninject(x)) != x (%v):\n%s", err, again)
				}
				return
			}
			back, changed, err := Uninject(out)
			if err != nil {
				t.Fatal(err)
			}
			if !changed {
				t.Fatal("Uninject reports no change on an injected object")
			}
			if eq, err := genericEqual(back, in); err != nil || !eq {
				t.Fatalf("Uninject(Inject(x)) != x (%v):\n%s", err, back)
			}
			if _, err := typedOf(back); err != nil {
				t.Fatalf("uninjected output does not decode strictly: %v", err)
			}
		})
	}
}

// TestIdempotent: injecting an injected object changes nothing.
func TestIdempotent(t *testing.T) {
	for _, file := range goldenInputs(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			out, _, err := Inject(readJSON(t, file), InjectUnlessRefused, testParams())
			if err != nil {
				t.Fatal(err)
			}
			again, res, err := Inject(out, InjectUnlessRefused, Params{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Injected || !bytes.Equal(again, out) {
				t.Fatalf("second injection changed the object (%+v):\n%s", res, again)
			}
		})
	}
}
