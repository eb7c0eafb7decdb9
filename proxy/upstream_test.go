package proxy

import (
	"strings"
	"testing"
)

func TestParseUpstream(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Upstream
	}{
		{"127.0.0.1:3000", Upstream{"tcp", "127.0.0.1:3000"}},
		{":3000", Upstream{"tcp", "127.0.0.1:3000"}},
		{"app:80", Upstream{"tcp", "app:80"}},
		{"[::1]:3000", Upstream{"tcp", "[::1]:3000"}},
		{"http://127.0.0.1:3000", Upstream{"tcp", "127.0.0.1:3000"}},
		{"http://127.0.0.1:3000/", Upstream{"tcp", "127.0.0.1:3000"}},
		{"unix:///run/app.sock", Upstream{"unix", "/run/app.sock"}},
	} {
		got, err := ParseUpstream(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseUpstream(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, wantErr string }{
		{"", "empty"},
		{"127.0.0.1", "not host:port"},
		{"127.0.0.1:99999", `port "99999"`},
		{"127.0.0.1:0", "port 0"},
		{"https://app:443", `scheme "https"`},
		{"http://app:80/api", "no path"},
		{"unix://relative.sock", "absolute"},
		{"127.0.0.1:http", `port "http"`},
		{" :1", "neither an IP address nor a host name"},
		{"app%zz:80", "neither"},
	} {
		_, err := ParseUpstream(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.in) {
			t.Errorf("ParseUpstream(%q) error %v; want one naming the value and saying %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestUpstreamStringRoundTrips(t *testing.T) {
	for _, in := range []string{"http://127.0.0.1:3000", "unix:///run/app.sock"} {
		u, err := ParseUpstream(in)
		if err != nil {
			t.Fatal(err)
		}
		if u.String() != in {
			t.Errorf("String() = %q, want %q", u.String(), in)
		}
	}
}
