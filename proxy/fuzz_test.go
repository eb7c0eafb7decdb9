package proxy

import (
	"strings"
	"testing"
)

// FuzzParseUpstream: never panics; whatever it accepts prints back to a form
// it accepts again, with the same meaning.
func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{"127.0.0.1:3000", ":80", "http://[::1]:8080/", "unix:///run/a.sock", "http://a:b@c:1", "[::1", "unix://", "http://:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUpstream(s)
		if err != nil {
			if !strings.Contains(err.Error(), "upstream") {
				t.Fatalf("error does not say what was wrong: %v", err)
			}
			return
		}
		again, err := ParseUpstream(u.String())
		if err != nil || again != u {
			t.Fatalf("%q → %+v prints as %q → %+v, %v", s, u, u.String(), again, err)
		}
	})
}

// FuzzRequestID: an accepted client id is printable and bounded.
func FuzzRequestID(f *testing.F) {
	f.Add("abc-123")
	f.Add(strings.Repeat("x", 200))
	f.Add("a b")
	f.Fuzz(func(t *testing.T, id string) {
		if validRequestID(id) && (len(id) > maxRequestIDLen || strings.ContainsAny(id, " \t\r\n\x00\x7f")) {
			t.Fatalf("accepted %q", id)
		}
	})
}
