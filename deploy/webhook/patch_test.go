package webhook

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// applyPatch is an independent RFC 6902 implementation of add, replace and
// remove (all jsonPatch emits), strict as the API server's: a replace or
// remove of an absent member fails, an array index must be in range.
func applyPatch(doc, patch []byte) ([]byte, error) {
	root, err := decodeGeneric(doc)
	if err != nil {
		return nil, err
	}
	var ops []struct {
		Op    string           `json:"op"`
		Path  string           `json:"path"`
		Value *json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	for i, op := range ops {
		if !strings.HasPrefix(op.Path, "/") {
			return nil, fmt.Errorf("op %d: path %q does not start with /", i, op.Path)
		}
		tokens := strings.Split(op.Path[1:], "/")
		for j, t := range tokens {
			tokens[j] = strings.NewReplacer("~1", "/", "~0", "~").Replace(t)
		}
		var val any
		if op.Op != "remove" {
			if op.Value == nil {
				return nil, fmt.Errorf("op %d (%s %s): no value", i, op.Op, op.Path)
			}
			if val, err = decodeGeneric(*op.Value); err != nil {
				return nil, err
			}
		}
		root, err = applyOp(root, tokens, op.Op, val)
		if err != nil {
			return nil, fmt.Errorf("op %d (%s %s): %w", i, op.Op, op.Path, err)
		}
	}
	return json.Marshal(root)
}

// applyOp applies one operation below node and returns the new node.
func applyOp(node any, tokens []string, op string, val any) (any, error) {
	last := len(tokens) == 1
	switch n := node.(type) {
	case map[string]any:
		k := tokens[0]
		child, ok := n[k]
		if last {
			switch {
			case op == "add":
				n[k] = val
			case !ok:
				return nil, fmt.Errorf("%s of absent member %q", op, k)
			case op == "replace":
				n[k] = val
			case op == "remove":
				delete(n, k)
			default:
				return nil, fmt.Errorf("unknown op %q", op)
			}
			return n, nil
		}
		if !ok {
			return nil, fmt.Errorf("no member %q", k)
		}
		c, err := applyOp(child, tokens[1:], op, val)
		n[k] = c
		return n, err
	case []any:
		i, err := strconv.Atoi(tokens[0])
		if tokens[0] == "-" && last && op == "add" {
			return append(n, val), nil
		}
		if err != nil || i < 0 || i > len(n) || (i == len(n) && !(last && op == "add")) {
			return nil, fmt.Errorf("index %q out of range for %d elements", tokens[0], len(n))
		}
		if last {
			switch op {
			case "add":
				return append(n[:i], append([]any{val}, n[i:]...)...), nil
			case "replace":
				n[i] = val
				return n, nil
			case "remove":
				return append(n[:i], n[i+1:]...), nil
			}
			return nil, fmt.Errorf("unknown op %q", op)
		}
		c, err := applyOp(n[i], tokens[1:], op, val)
		n[i] = c
		return n, err
	}
	return nil, fmt.Errorf("cannot descend into %T at %q", node, tokens[0])
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	x, err1 := decodeGeneric(a)
	y, err2 := decodeGeneric(b)
	if err1 != nil || err2 != nil {
		t.Fatalf("decode: %v %v", err1, err2)
	}
	return reflect.DeepEqual(x, y)
}

func TestJSONPatchRoundTrips(t *testing.T) {
	cases := []struct{ name, before, after, wantOps string }{
		{"equal", `{"a":1,"b":[1,2]}`, `{"b":[1,2],"a":1}`, `null`},
		{"add absent annotations", `{"metadata":{"name":"p"}}`, `{"metadata":{"name":"p","annotations":{"tidegate.io/status":"{}"}}}`,
			`[{"op":"add","path":"/metadata/annotations","value":{"tidegate.io/status":"{}"}}]`},
		{"escaped key in present map", `{"metadata":{"annotations":{"a":"1"}}}`, `{"metadata":{"annotations":{"a":"1","tidegate.io/status":"x","t~x":"y"}}}`,
			`[{"op":"add","path":"/metadata/annotations/tidegate.io~1status","value":"x"},{"op":"add","path":"/metadata/annotations/t~0x","value":"y"}]`},
		{"replace and remove", `{"a":1,"b":"x","c":true}`, `{"a":2,"c":true}`,
			`[{"op":"replace","path":"/a","value":2},{"op":"remove","path":"/b"}]`},
		{"array grows", `{"l":[{"n":"a"}]}`, `{"l":[{"n":"a","p":[1]},{"n":"b"},{"n":"c"}]}`,
			`[{"op":"add","path":"/l/0/p","value":[1]},{"op":"add","path":"/l/1","value":{"n":"b"}},{"op":"add","path":"/l/2","value":{"n":"c"}}]`},
		{"array shrinks", `{"l":[1,2,3,4]}`, `{"l":[1,9]}`,
			`[{"op":"replace","path":"/l/1","value":9},{"op":"remove","path":"/l/3"},{"op":"remove","path":"/l/2"}]`},
		{"type changes", `{"a":{"x":1},"b":[1]}`, `{"a":[1],"b":{"x":null}}`,
			`[{"op":"replace","path":"/a","value":[1]},{"op":"replace","path":"/b","value":{"x":null}}]`},
		{"big numbers kept exact", `{"n":12345678901234567890}`, `{"n":12345678901234567891}`,
			`[{"op":"replace","path":"/n","value":12345678901234567891}]`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := jsonPatch([]byte(c.before), []byte(c.before), []byte(c.after))
			if err != nil {
				t.Fatal(err)
			}
			if got := string(p); !jsonEqual(t, []byte(orNull(got)), []byte(c.wantOps)) {
				t.Errorf("patch\n got %s\nwant %s", got, c.wantOps)
			}
			if p == nil {
				return
			}
			applied, err := applyPatch([]byte(c.before), p)
			if err != nil {
				t.Fatalf("apply %s: %v", p, err)
			}
			if !jsonEqual(t, applied, []byte(c.after)) {
				t.Errorf("applied\n got %s\nwant %s", applied, c.after)
			}
		})
	}
}

// TestJSONPatchAgainstRaw: members the encoder writes but the raw
// document lacks are added whole; members only raw has are left alone.
func TestJSONPatchAgainstRaw(t *testing.T) {
	raw := `{"kind":"Pod","Spec":{"x":1},"spec":{"containers":[{"name":"a","future":true}]},"status":null}`
	before := `{"kind":"Pod","metadata":{},"spec":{"containers":[{"name":"a","resources":{}}]},"status":{}}`
	after := `{"kind":"Pod","metadata":{"annotations":{"k":"v"}},"spec":{"containers":[{"name":"a","resources":{"limits":{"cpu":"1"}}}]},"status":{"phase":"x"}}`
	p, err := jsonPatch([]byte(raw), []byte(before), []byte(after))
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"op":"add","path":"/metadata","value":{"annotations":{"k":"v"}}},` +
		`{"op":"add","path":"/spec/containers/0/resources","value":{"limits":{"cpu":"1"}}},` +
		`{"op":"replace","path":"/status","value":{"phase":"x"}}]`
	if !jsonEqual(t, p, []byte(want)) {
		t.Fatalf("patch\n got %s\nwant %s", p, want)
	}
	got, err := applyPatch([]byte(raw), p)
	if err != nil {
		t.Fatal(err)
	}
	wantDoc := `{"kind":"Pod","Spec":{"x":1},"metadata":{"annotations":{"k":"v"}},"spec":{"containers":[{"name":"a","future":true,"resources":{"limits":{"cpu":"1"}}}]},"status":{"phase":"x"}}`
	if !jsonEqual(t, got, []byte(wantDoc)) {
		t.Errorf("applied\n got %s\nwant %s", got, wantDoc)
	}
}

func orNull(s string) string {
	if s == "" {
		return "null"
	}
	return s
}

func TestJSONPatchRefusesNonObjects(t *testing.T) {
	if _, err := jsonPatch([]byte(`[1]`), []byte(`[1]`), []byte(`{"a":1}`)); err == nil {
		t.Error("array vs object: no error")
	}
	if _, err := jsonPatch([]byte(`{`), []byte(`{}`), []byte(`{}`)); err == nil {
		t.Error("truncated original: no error")
	}
}
