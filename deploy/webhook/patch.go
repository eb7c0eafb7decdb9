package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// patchOp is one RFC 6902 operation. Value is raw JSON, absent for remove
// (a JSON null value is kept: it is not empty).
type patchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

// jsonPatch returns the RFC 6902 patch that turns the JSON document raw
// into one that decodes like after, or nil when nothing changes. before is
// raw decoded into the k8s.io/api types and encoded again, after the same
// object as mutated: comparing those two, fields the types do not know and
// formatting the encoder normalises never show up as changes; raw is
// consulted only for which members exist there, so that every path the
// patch names exists in raw (the encoder writes some empty members, such
// as "metadata": {}, that raw may lack: they are added whole).
//
// Objects are compared member by member (add, remove, replace); arrays
// element by element over their common length, then elements added at the
// end or removed from the end; any other difference replaces the value.
// Operations come in a stable order (object keys sorted), each applicable
// after the ones before it.
func jsonPatch(raw, before, after []byte) ([]byte, error) {
	r, err := decodeGeneric(raw)
	if err != nil {
		return nil, fmt.Errorf("original: %w", err)
	}
	a, err := decodeGeneric(before)
	if err != nil {
		return nil, fmt.Errorf("original, encoded again: %w", err)
	}
	b, err := decodeGeneric(after)
	if err != nil {
		return nil, fmt.Errorf("mutated: %w", err)
	}
	if _, ok := r.(map[string]any); !ok {
		return nil, errors.New("original is not a JSON object")
	}
	var ops []patchOp
	if err := diff("", r, a, b, &ops); err != nil {
		return nil, err
	}
	if len(ops) == 0 {
		return nil, nil
	}
	return json.Marshal(ops)
}

func decodeGeneric(doc []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber() // numbers compare and re-encode exactly
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// diff appends the operations that turn a into b at path; r is the value
// at path in the raw document, which exists.
func diff(path string, r, a, b any, ops *[]patchOp) error {
	if reflect.DeepEqual(a, b) {
		return nil
	}
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		rv, rok := r.(map[string]any)
		if !ok || !rok {
			break
		}
		keys := make([]string, 0, len(av)+len(bv))
		for k := range av {
			keys = append(keys, k)
		}
		for k := range bv {
			if _, in := av[k]; !in {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := path + "/" + escapePointer(k)
			x, inA := av[k]
			y, inB := bv[k]
			z, inR := rv[k]
			switch {
			case !inB: // inA
				if inR {
					*ops = append(*ops, patchOp{Op: "remove", Path: p})
				}
			case !inA || !inR: // add, or replace what raw has there
				if err := addOp(ops, "add", p, y); err != nil {
					return err
				}
			default:
				if err := diff(p, z, x, y, ops); err != nil {
					return err
				}
			}
		}
		return nil
	case []any:
		bv, ok := b.([]any)
		rv, rok := r.([]any)
		if !ok || !rok || len(rv) != len(av) {
			break
		}
		n := min(len(av), len(bv))
		for i := range n {
			if err := diff(path+"/"+strconv.Itoa(i), rv[i], av[i], bv[i], ops); err != nil {
				return err
			}
		}
		for i := n; i < len(bv); i++ {
			if err := addOp(ops, "add", path+"/"+strconv.Itoa(i), bv[i]); err != nil {
				return err
			}
		}
		for i := len(av) - 1; i >= n; i-- { // from the end, so indexes stay valid
			*ops = append(*ops, patchOp{Op: "remove", Path: path + "/" + strconv.Itoa(i)})
		}
		return nil
	}
	if path == "" {
		return errors.New("documents are not both JSON objects")
	}
	return addOp(ops, "replace", path, b)
}

func addOp(ops *[]patchOp, op, path string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	*ops = append(*ops, patchOp{Op: op, Path: path, Value: raw})
	return nil
}

// escapePointer escapes one JSON Pointer reference token (RFC 6901): "~"
// is "~0" and "/" is "~1", so tidegate.io/status is tidegate.io~1status.
// pointerEscaper is built once: a Replacer builds its tables on first use,
// which was an eighth of an admission's CPU when made per call.
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapePointer(s string) string {
	return pointerEscaper.Replace(s)
}
