package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
)

// typedOf decodes doc strictly (encoding/json, unknown fields rejected) into
// the k8s.io/api type of its kind; nil for a kind without pods.
func typedOf(doc []byte) (any, error) {
	var h struct{ APIVersion, Kind string }
	if err := json.Unmarshal(doc, &h); err != nil {
		return nil, err
	}
	var obj any
	switch {
	case h.APIVersion == "v1" && h.Kind == "List":
		obj = &corev1.List{}
	case isPassed(h.APIVersion, h.Kind):
		return nil, nil
	default:
		for _, k := range injectedKinds() {
			if k.apiVersion == h.APIVersion && k.kind == h.Kind {
				obj = k.new()
			}
		}
	}
	if obj == nil {
		return nil, fmt.Errorf("kind %s %s", h.APIVersion, h.Kind)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, err
	}
	if l, ok := obj.(*corev1.List); ok {
		for i, it := range l.Items {
			if _, err := typedOf(it.Raw); err != nil {
				return nil, fmt.Errorf("items[%d]: %w", i, err)
			}
		}
	}
	return obj, nil
}

// semantic is doc as the API types see it: decoded strictly into its type
// and written back (a List item by item), decoded generically.
func semantic(doc []byte) (any, error) {
	obj, err := typedOf(doc)
	if err != nil {
		return nil, err
	}
	if obj == nil {
		return decodeGeneric(doc)
	}
	if l, ok := obj.(*corev1.List); ok {
		items := make([]any, len(l.Items))
		for i, it := range l.Items {
			if items[i], err = semantic(it.Raw); err != nil {
				return nil, err
			}
		}
		l.Items = nil
		m, err := canonical(l)
		if err != nil {
			return nil, err
		}
		m.(map[string]any)["items"] = items
		return m, nil
	}
	return canonical(obj)
}

// semanticEqual reports whether a and b are the same object to the API.
func semanticEqual(a, b []byte) (bool, error) {
	sa, err := semantic(a)
	if err != nil {
		return false, err
	}
	sb, err := semantic(b)
	if err != nil {
		return false, err
	}
	return reflect.DeepEqual(sa, sb), nil
}

// genericEqual reports whether a and b are the same JSON value.
func genericEqual(a, b []byte) (bool, error) {
	ga, err := decodeGeneric(a)
	if err != nil {
		return false, err
	}
	gb, err := decodeGeneric(b)
	if err != nil {
		return false, err
	}
	return reflect.DeepEqual(ga, gb), nil
}
