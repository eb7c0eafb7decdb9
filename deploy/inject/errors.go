package inject

import "strings"

// Policy is which pods Inject changes.
type Policy int

const (
	// InjectUnlessRefused injects every pod but one annotated
	// tidegate.io/inject: "false" (the CLI, and the webhook in a namespace
	// labelled tidegate.io/inject=enabled).
	InjectUnlessRefused Policy = iota
	// InjectIfAsked injects only a pod annotated tidegate.io/inject: "true".
	InjectIfAsked
)

// Why a pod was left alone, in Result.Skipped.
const (
	SkipRefused         = "refused"          // tidegate.io/inject: "false"
	SkipNotAsked        = "not-asked"        // InjectIfAsked and no tidegate.io/inject: "true"
	SkipAlreadyInjected = "already-injected" // tidegate.io/status is present
)

// Result is what Inject did.
type Result struct {
	// Injected is true when the object changed.
	Injected bool
	// Skipped says why a pod was left alone: SkipRefused, SkipNotAsked or
	// SkipAlreadyInjected; "" when it was injected (or the object carries no
	// pod).
	Skipped string
	// Warnings are for the operator, e.g. "terminationGracePeriodSeconds
	// raised from 30 to 45: …".
	Warnings []string
}

// Error is every error Inject, InjectPod, Uninject and UninjectPod return:
// which object, which field, and what to do.
type Error struct {
	// Object is "Kind namespace/name" ("Pod" and no name for InjectPod on a
	// pod without one; generateName stands in for a missing name).
	Object string
	// Field is the path of the field at fault, e.g.
	// "spec.template.spec.containers[app].ports" or
	// "metadata.annotations[tidegate.io/app-port]"; "" for the whole
	// document.
	Field string
	// Msg says what is wrong and what to write instead.
	Msg string
	// Explicit is true when the pod carries a tidegate.io/ annotation: it
	// asked for tidegate or tuned it, so failing to inject it is worth a
	// denial, not just a warning.
	Explicit bool
}

// Error is "Deployment default/web: spec.template.spec.containers[app].ports: …".
func (e *Error) Error() string {
	var b strings.Builder
	if e.Object != "" {
		b.WriteString(e.Object)
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}
