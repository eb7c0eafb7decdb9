package inject

import (
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// missing stands for a key a JSON object does not have.
type missing struct{}

// merge returns orig changed as much as needed to make it say what after
// says where before (orig as the API types write it) and after differ: the
// rest of orig stays as it was written, so the output gains none of the
// empty fields the types write (creationTimestamp: null, status: {},
// resources: {}). All three are decoded generically. It returns missing{}
// where the result has no value.
func merge(orig, before, after any) any {
	if reflect.DeepEqual(before, after) {
		return orig
	}
	if bm, ok := before.(map[string]any); ok {
		if am, ok := after.(map[string]any); ok {
			return mergeMaps(orig, bm, am)
		}
	}
	if bl, ok := before.([]any); ok {
		if al, ok := after.([]any); ok {
			return mergeLists(orig, bl, al)
		}
	}
	return dropNulls(after)
}

func mergeMaps(orig any, before, after map[string]any) any {
	om, _ := orig.(map[string]any)
	res := make(map[string]any, len(om)+len(after))
	for k, v := range om {
		res[k] = v
	}
	for k, av := range after {
		bv, inBefore := before[k]
		if !inBefore {
			res[k] = dropNulls(av)
			continue
		}
		ov, inOrig := om[k]
		if !inOrig {
			ov = missing{}
		}
		if r := merge(ov, bv, av); r == (missing{}) || emptiedMap(ov, r) {
			delete(res, k)
		} else {
			res[k] = r
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			delete(res, k)
		}
	}
	return res
}

// emptiedMap reports whether merging took every member of a map away (a
// pod template's metadata after uninjection): the map goes with them.
func emptiedMap(orig, merged any) bool {
	om, ok1 := orig.(map[string]any)
	mm, ok2 := merged.(map[string]any)
	return ok1 && ok2 && len(om) > 0 && len(mm) == 0
}

// mergeLists merges element by element when the length stays, else by the
// elements' names (containers, volumes, mounts), else takes after.
func mergeLists(orig any, before, after []any) any {
	ol, _ := orig.([]any)
	if len(ol) != len(before) {
		return dropNulls(after)
	}
	if len(before) == len(after) {
		res := make([]any, len(after))
		for i := range after {
			res[i] = merge(ol[i], before[i], after[i])
		}
		return res
	}
	bi, ok1 := nameIndex(before)
	_, ok2 := nameIndex(after)
	if !ok1 || !ok2 {
		return dropNulls(after)
	}
	res := make([]any, len(after))
	for j, a := range after {
		if i, ok := bi[elementName(a)]; ok {
			res[j] = merge(ol[i], before[i], a)
		} else {
			res[j] = dropNulls(a)
		}
	}
	return res
}

func elementName(v any) string {
	m, _ := v.(map[string]any)
	s, _ := m["name"].(string)
	return s
}

// nameIndex maps each element's name to its index; false when an element
// has no name or two share one.
func nameIndex(l []any) (map[string]int, bool) {
	idx := make(map[string]int, len(l))
	for i, v := range l {
		n := elementName(v)
		if _, dup := idx[n]; n == "" || dup {
			return nil, false
		}
		idx[n] = i
	}
	return idx, true
}

// dropNulls is v without its null object members (what the API types write
// for an unset pointer that is not omitempty).
func dropNulls(v any) any {
	switch t := v.(type) {
	case map[string]any:
		res := make(map[string]any, len(t))
		for k, e := range t {
			if e != nil {
				res[k] = dropNulls(e)
			}
		}
		return res
	case []any:
		res := make([]any, len(t))
		for i, e := range t {
			res[i] = dropNulls(e)
		}
		return res
	}
	return v
}

// checkFields fails on the first object member of v (decoded generically)
// that type t has no field for, by exact name, as the API server decodes;
// encoding/json alone would take "Name" for "name".
func checkFields(v any, t reflect.Type, path string) *Error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) || reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil // a type error, which decoding reports
		}
		fields := map[string]reflect.Type{}
		jsonFields(t, fields)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			p := k
			if path != "" {
				p = path + "." + k
			}
			if !ok {
				return &Error{Field: p, Msg: fmt.Sprintf("unknown field %q: not in the Kubernetes schema of %s (names are case-sensitive)", k, t.Name())}
			}
			if err := checkFields(m[k], ft, p); err != nil {
				return err
			}
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok || t.Elem().Kind() == reflect.Uint8 {
			return nil
		}
		for i, e := range l {
			sub := fmt.Sprintf("%s[%d]", path, i)
			if n := elementName(e); n != "" {
				sub = path + "[" + n + "]"
			}
			if err := checkFields(e, t.Elem(), sub); err != nil {
				return err
			}
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if err := checkFields(m[k], t.Elem(), path+"["+k+"]"); err != nil {
				return err
			}
		}
	}
	return nil
}

// jsonFields adds the JSON names of t's fields to fields, with embedded
// inline structs flattened.
func jsonFields(t reflect.Type, fields map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				jsonFields(ft, fields)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
}
