package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"

	"go.uber.org/zap"
	"golang.org/x/net/http2/hpack"
)

// Loop detection. Two tidegates pointed at each other (or one pointed at
// itself through another name) would pass one request back and forth,
// each hop a new connection and a new goroutine, until the files ran out.
// So every request tidegate forwards to the app carries a Via entry
// (RFC 9110 §7.6.3) naming it, "Via: 1.1 tidegate-<id>" (the received
// protocol is the client's: 1.0, 1.1 or 2), appended after any the client
// sent; and a request that arrives with this tidegate's own entry, or with
// more than MaxHops entries of tidegates, is answered 508 Loop Detected
// with reason "loop" and never forwarded.
//
// It holds on every path: Handler.ServeHTTP (net/http, both protocols,
// WebSocket and other upgrades, CONNECT, whose request head to the app
// carries Via too; the tunnelled bytes are not looked at), the HTTP/1.1
// fast path, and tidegate's HTTP/2 server, whose direct and spliced
// streams add Via themselves and leave a looping request to ServeHTTP.
//
// Responses get no Via, as Envoy, HAProxy and nginx do by default: a Via
// the app sends passes to the client unchanged. The entry names the
// tidegate by a pseudonym, never by its address.
//
// The cost on a request without Via is one precomputed line written with
// the head; the Via fields are only read when the request has some.

// DefaultMaxHops is LoopOptions.MaxHops when it is zero.
const DefaultMaxHops = 8

// LoopOptions configures loop detection.
type LoopOptions struct {
	// Off stops tidegate from adding Via to requests and from looking at
	// the Via they carry. Default false: on.
	Off bool

	// ID names this tidegate in Via, as "tidegate-<ID>": letters, digits
	// and - . _ ~, at most 64 bytes. Give each tidegate of a chain its
	// own, or the second refuses what the first forwards. Empty means a
	// random 16-hex-digit id made by NewHandler, so that two Handlers in
	// one process (two listeners, one in front of the other) differ.
	ID string

	// MaxHops is the most tidegate Via entries a request may carry when it
	// arrives; one with more is refused with 508, so that even a loop whose
	// tidegates do not recognise their own entry ends. Zero means
	// DefaultMaxHops (8).
	MaxHops int
}

// viaPrefix starts the pseudonym of every tidegate.
const viaPrefix = "tidegate-"

// maxViaID bounds a configured id.
const maxViaID = 64

// loopGuard is a Handler's loop policy: its Via values, made once.
type loopGuard struct {
	on      bool
	name    string // "tidegate-<id>"
	maxHops int
	// vals are the entries for requests received over HTTP/1.0, 1.1 and
	// 2 ("1.1 tidegate-<id>", ...; see viaIndex); only holds each alone
	// in a slice of capacity 1, the Via of a request whose client sent
	// none (an append copies it, so it is never written to).
	vals   [3]string
	only   [3][]string
	line11 []byte // "Via: 1.1 tidegate-<id>\r\n"; nil when off
	line2  []byte // "Via: 2 tidegate-<id>\r\n"; nil when off
}

// newLoopGuard checks o and makes the Via values.
func newLoopGuard(o LoopOptions) (loopGuard, error) {
	if o.Off {
		return loopGuard{}, nil
	}
	if o.MaxHops < 0 {
		return loopGuard{}, fmt.Errorf("proxy: max hops %d is negative: give 0 for the default (%d) or more", o.MaxHops, DefaultMaxHops)
	}
	id := o.ID
	if id == "" {
		var b [8]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		id = hex.EncodeToString(b[:])
	} else if !validViaID(id) {
		return loopGuard{}, fmt.Errorf("proxy: via id %q: use at most %d letters, digits, '-', '.', '_' or '~'", id, maxViaID)
	}
	g := loopGuard{on: true, name: viaPrefix + id, maxHops: o.MaxHops}
	if g.maxHops == 0 {
		g.maxHops = DefaultMaxHops
	}
	for i, proto := range [...]string{"1.0", "1.1", "2"} {
		g.vals[i] = proto + " " + g.name
		g.only[i] = []string{g.vals[i]}[:1:1]
	}
	g.line11 = []byte("Via: " + g.vals[1] + "\r\n")
	g.line2 = []byte("Via: " + g.vals[2] + "\r\n")
	return g, nil
}

// viaIndex is the index in loopGuard.vals of HTTP/major.minor.
func viaIndex(major, minor int) int {
	switch {
	case major == 2:
		return 2
	case major == 1 && minor == 0:
		return 0
	}
	return 1
}

func validViaID(id string) bool {
	if len(id) > maxViaID {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

// ViaName returns the pseudonym h puts in Via ("tidegate-<id>"), or ""
// when loop detection is off.
func (h *Handler) ViaName() string { return h.loop.name }

// errLoop is the answer to a request that looped.
var errLoop = failure{http.StatusLoopDetected, ReasonLoop, false, "request loop detected (this request already passed through this tidegate, or through too many)"}

// addVia appends h's Via entry to out, a request to the app made from in:
// after the client's, as a field line of its own.
func (h *Handler) addVia(out http.Header, in *http.Request) {
	if !h.loop.on {
		return
	}
	i := viaIndex(in.ProtoMajor, in.ProtoMinor)
	if len(out["Via"]) == 0 {
		out["Via"] = h.loop.only[i]
		return
	}
	out["Via"] = append(out["Via"], h.loop.vals[i])
}

// appendViaH2 appends h's Via field to an HTTP/2 header block for the app.
func (h *Handler) appendViaH2(out []hpack.HeaderField) []hpack.HeaderField {
	if !h.loop.on {
		return out
	}
	return append(out, hpack.HeaderField{Name: "via", Value: h.loop.vals[2]})
}

// viaState adds up the Via values of one request.
type viaState struct {
	own  bool // this tidegate's entry is there
	hops int  // tidegate entries
}

// scanVia reads one Via field value: a comma-separated list of
// "protocol received-by [comment]" entries.
func scanVia[T string | []byte](g *loopGuard, v T, s *viaState) {
	i := 0
	for i < len(v) {
		// One entry: skip blanks and empty list elements.
		for i < len(v) && (v[i] == ' ' || v[i] == '\t' || v[i] == ',') {
			i++
		}
		// received-protocol
		for i < len(v) && v[i] != ' ' && v[i] != '\t' && v[i] != ',' {
			i++
		}
		for i < len(v) && (v[i] == ' ' || v[i] == '\t') {
			i++
		}
		// received-by
		start := i
		for i < len(v) && v[i] != ' ' && v[i] != '\t' && v[i] != ',' {
			i++
		}
		by := v[start:i]
		if len(by) > len(viaPrefix) && string(by[:len(viaPrefix)]) == viaPrefix {
			s.hops++
			if string(by) == g.name {
				s.own = true
			}
		}
		// The rest of the entry: a comment, which may hold commas.
		depth := 0
		for i < len(v) && (depth > 0 || v[i] != ',') {
			switch v[i] {
			case '(':
				depth++
			case ')':
				if depth > 0 {
					depth--
				}
			case '\\':
				if depth > 0 {
					i++
				}
			}
			i++
		}
	}
}

// loops reports whether what s found means a loop.
func (g *loopGuard) loops(s *viaState) bool { return s.own || s.hops > g.maxHops }

// loopHeader reports whether a request with header hdr looped, and logs
// it if so. For ServeHTTP, which answers every path's looping requests
// but the fast path's.
func (h *Handler) loopHeader(hdr http.Header, method, path, id string) bool {
	vs := hdr["Via"]
	if !h.loop.on || len(vs) == 0 {
		return false
	}
	var s viaState
	for _, v := range vs {
		scanVia(&h.loop, v, &s)
	}
	if !h.loop.loops(&s) {
		return false
	}
	h.logLoop(&s, method, path, id)
	return true
}

// loopH1 is loopHeader for the fast path's parsed fields; the caller
// knows there is a Via field.
func (h *Handler) loopH1(fields []h1field, method []byte, target []byte, id []byte) bool {
	if !h.loop.on {
		return false
	}
	var s viaState
	for _, f := range fields {
		if fieldIs(f.name, "via") {
			scanVia(&h.loop, f.value, &s)
		}
	}
	if !h.loop.loops(&s) {
		return false
	}
	h.logLoop(&s, methodString(method), targetPath(target), string(id))
	return true
}

// loopH2 reports whether an HTTP/2 request with fields looped, for the
// HTTP/2 server's choice of path: such a request goes to the handler,
// which answers it (and logs it). Costs a comparison per field when
// there is no Via.
func (h *Handler) loopH2(fields []hpack.HeaderField) bool {
	if !h.loop.on {
		return false
	}
	var s viaState
	for _, f := range fields {
		if f.Name == "via" {
			scanVia(&h.loop, f.Value, &s)
		}
	}
	return h.loop.loops(&s)
}

func (h *Handler) logLoop(s *viaState, method, path, id string) {
	h.log.Warn("request loop detected: answered 508",
		zap.String("reason", string(ReasonLoop)),
		zap.Bool("own_via", s.own),
		zap.Int("tidegate_hops", s.hops),
		zap.Int("max_hops", h.loop.maxHops),
		zap.String("via", h.loop.name),
		zap.String("method", method),
		zap.String("path", path),
		zap.String("request_id", id))
}
