package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/tidegate/tidegate/proxy"
)

// drainCmd is `tidegate drain [--wait DUR] [--admin ADDR]`: it asks a
// running sidecar to drain through its admin listener, for exec preStop
// hooks. With --wait it returns once the drain has reached stopping_app.
// Exit 0 when the drain started (or reached stopping_app with --wait), 1 when
// the sidecar could not be reached or the wait ran out, 2 on bad usage.
func drainCmd(args []string, e env) int {
	fs := flag.NewFlagSet("tidegate drain", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	defAdmin := "127.0.0.1:9901"
	if v := e.getenv("TIDEGATE_ADMIN_LISTEN"); v != "" && v != off {
		defAdmin = v
	}
	admin := fs.String("admin", defAdmin, "the sidecar's admin address (env TIDEGATE_ADMIN_LISTEN)")
	wait := fs.Duration("wait", 0, "wait this long for the drain to reach stopping_app; 0 returns at once")
	fs.Usage = func() {
		fmt.Fprint(e.stderr, "Usage: tidegate drain [--admin ADDR] [--wait DURATION]\n\nAsks a running tidegate to drain, as SIGTERM would.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || *wait < 0 {
		fmt.Fprintf(e.stderr, "tidegate drain: takes only --admin and --wait (a duration ≥ 0)\n")
		return 2
	}
	host, port, err := proxy.SplitHostPort(*admin)
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate drain: --admin %q: %v\n", *admin, err)
		return 2
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1" // a wildcard listener is reachable on loopback
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, fmt.Sprint(port)), Path: "/drain"}
	if *wait > 0 {
		u.RawQuery = "wait=" + wait.String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), *wait+10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), http.NoBody)
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate drain: cannot reach the admin listener at %s: %v\n", u.Host, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(e.stdout, "%s", body)
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted:
		return 0
	default:
		fmt.Fprintf(e.stderr, "tidegate drain: %s answered %s\n", u.String(), resp.Status)
		return 1
	}
}
