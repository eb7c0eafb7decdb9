package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// haproxySpec writes a HAProxy configuration into dir and returns how to
// run it: in the foreground (-db), one thread, its messages in a log file
// in dir. The front speaks p (h2c: `proto h2` on the bind line); the app is
// reached over HTTP/1.1, or h2c (`proto h2` on the server line) for gRPC,
// with idle server connections shared between clients (http-reuse always).
// With headers it adds what tidegate adds: X-Forwarded-For, -Proto and
// -Host, and an X-Request-Id (a random UUID unless the client sent one),
// which it also puts on the answer.
func haproxySpec(dir, bin, listen, upstream string, p proto, headers bool) (procSpec, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return procSpec{}, "", err
	}
	bindOpts, serverOpts := "", ""
	if p != protoHTTP1 {
		bindOpts = " proto h2"
	}
	if p == protoGRPC {
		serverOpts = " proto h2"
	}
	front := ""
	if headers {
		front = `    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Request-Id %[uuid()] unless { req.hdr(x-request-id) -m found }
    http-request set-var(txn.request_id) req.hdr(x-request-id)
    http-response set-header X-Request-Id %[var(txn.request_id)]
`
	}
	conf := fmt.Sprintf(`global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always

frontend front
    bind %s%s
%s    default_backend app

backend app
    server app %s%s
`, listen, bindOpts, front, upstream, serverOpts)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return procSpec{}, "", err
	}
	log := filepath.Join(dir, "haproxy.log")
	return procSpec{Bin: bin, Args: []string{"-db", "-f", path}, Log: log}, log, nil
}
