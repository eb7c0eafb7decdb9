package main

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestUpstreamIsSelf: the static self-loop check refuses an upstream that
// is tidegate's own listener, however it is spelled, and nothing else: the
// same port on another host is a valid setup.
func TestUpstreamIsSelf(t *testing.T) {
	local := func() []net.IP {
		return []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.9.8.7"), net.ParseIP("fd00::7")}
	}
	for _, tc := range []struct {
		up, listen string
		self       bool
	}{
		// Loops.
		{"127.0.0.1:8080", ":8080", true},
		{"localhost:8080", ":8080", true},
		{"LocalHost:8080", ":8080", true},
		{"app.localhost:8080", ":8080", true},
		{"0.0.0.0:8080", ":8080", true},
		{"[::1]:8080", ":8080", true},
		{"[::]:8080", ":8080", true},
		{"127.0.0.2:8080", ":8080", true},
		{"127.0.0.1:8080", "0.0.0.0:8080", true},
		{"127.0.0.1:8080", "[::]:8080", true},
		{"10.9.8.7:8080", ":8080", true}, // this machine's address, wildcard listener
		{"[fd00::7]:8080", "[::]:8080", true},
		{"localhost:18080", "127.0.0.1:18080", true},
		{"10.1.2.3:8080", "10.1.2.3:8080", true},
		{"app:8080", "app:8080", true},
		{"[::ffff:10.1.2.3]:8080", "10.1.2.3:8080", true},
		// Not loops.
		{"10.1.2.3:18080", "127.0.0.1:18080", false}, // issue 20: same port, another host
		{"10.1.2.3:8080", ":8080", false},            // not one of this machine's addresses
		{"app.internal:8080", ":8080", false},        // a name: the Via check decides at run time
		{"127.0.0.1:8080", "10.1.2.3:8080", false},   // the listener does not take loopback
		{"10.9.8.7:8080", "10.1.2.3:8080", false},
		{"[::1]:18080", "127.0.0.1:18080", false}, // another loopback address: a socket bound to one is not reached by the other
		{"127.0.0.2:18080", "127.0.0.1:18080", false},
		{"127.0.0.1:18080", "[::1]:18080", false},
		{"127.0.0.1:3000", ":8080", false},
		{"127.0.0.1:8080", ":0", false},
		{"bad", ":8080", false},
	} {
		if got := upstreamIsSelf(tc.up, tc.listen, local); got != tc.self {
			t.Errorf("upstreamIsSelf(%q, %q) = %v, want %v", tc.up, tc.listen, got, tc.self)
		}
	}
}

// TestSelfLoopConfigs: loading refuses the spellings of an upstream that is
// the listener (issue 20 found six refused, which must stay so), and
// accepts the same port on another host.
func TestSelfLoopConfigs(t *testing.T) {
	for _, up := range []string{"127.0.0.1:8080", "localhost:8080", ":8080", "0.0.0.0:8080", "[::1]:8080",
		"http://localhost:8080", "http://127.0.0.1:8080/", "[::]:8080"} {
		_, err := loadConfig([]string{"--upstream", up}, envOf(nil))
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "would loop") || !strings.Contains(err.Error(), up) {
			t.Errorf("--upstream %s with --listen :8080: error %v, want a usage error naming it and the loop", up, err)
		}
	}
	for _, args := range [][]string{
		{"--listen", "127.0.0.1:18080", "--upstream", "10.1.2.3:18080"},
		{"--listen", "10.1.2.3:18080", "--upstream", "127.0.0.1:18080"},
		{"--listen", ":8080", "--upstream", "app.internal:8080"},
		{"--listen", "127.0.0.1:18080", "--upstream", "[::1]:18080"},
	} {
		if _, err := loadConfig(args, envOf(nil)); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}

// TestUpstreamOnAnotherLoopbackAddress: an app bound to [::1]:P (Node's
// "localhost" since v17) behind tidegate on 127.0.0.1:P is a valid setup,
// not a loop: both sockets are bound at once, and a dial to one does not
// reach the other. The static check lets it start.
func TestUpstreamOnAnotherLoopbackAddress(t *testing.T) {
	app, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	defer app.Close()
	port := app.Addr().(*net.TCPAddr).Port
	front, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Skipf("127.0.0.1:%d is taken: %v", port, err)
	}
	defer front.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := app.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", app.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case ac := <-accepted:
		ac.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the app on [::1] accepted no connection")
	}
	listen, up := front.Addr().String(), app.Addr().String()
	if upstreamIsSelf(up, listen, interfaceIPs) {
		t.Fatalf("upstreamIsSelf(%q, %q): a loop, but the app is another socket", up, listen)
	}
	if _, err := loadConfig([]string{"--listen", listen, "--upstream", up}, envOf(nil)); err != nil {
		t.Fatalf("--listen %s --upstream %s: %v", listen, up, err)
	}
}

// TestMaxHopsSetting: --max-hops reaches the proxy's loop options; 0
// turns loop detection off.
func TestMaxHopsSetting(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 8},
		{[]string{"--max-hops", "3"}, 3},
		{[]string{"--max-hops", "0"}, 0},
	} {
		l, err := loadConfig(append([]string{"--upstream", ":3000"}, tc.args...), envOf(nil))
		if err != nil {
			t.Fatal(err)
		}
		if l.cfg.Server.MaxHops != tc.want {
			t.Errorf("%q: max hops %d, want %d", tc.args, l.cfg.Server.MaxHops, tc.want)
		}
	}
	_, err := loadConfig([]string{"--upstream", ":3000", "--max-hops", "-1"}, envOf(nil))
	if err == nil || !strings.Contains(err.Error(), "--max-hops") || !strings.Contains(err.Error(), `"-1"`) {
		t.Errorf("--max-hops -1: error %v", err)
	}
}
