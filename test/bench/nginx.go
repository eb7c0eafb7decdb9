package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// nginxSpec writes an nginx configuration into dir and returns how to run
// it: in the foreground, one worker, error log in dir. The front speaks p
// (h2c: `listen … http2`, which in nginx 1.22 makes the port h2c-only);
// the app is reached over a keep-alive pool, with HTTP/1.1, or with
// grpc_pass for gRPC. keepalive_requests is raised on both sides: its
// default of 1000 would close every connection after 1000 requests.
func nginxSpec(dir, bin, listen, upstream string, p proto) (procSpec, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return procSpec{}, "", err
	}
	errLog := filepath.Join(dir, "error.log")
	var b strings.Builder
	if os.Geteuid() == 0 {
		// The workers would otherwise run as nobody:nobody, and Debian
		// has no group nobody.
		b.WriteString("user root root;\n")
	}
	fmt.Fprintf(&b, `daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[2]s warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream app {
        server %[3]s;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen %[4]s%[5]s;
        location / {
%[6]s
        }
    }
}
`, dir, errLog, upstream, listen, nginxListenOpts(p), nginxLocation(p))
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return procSpec{}, "", err
	}
	return procSpec{Bin: bin, Args: []string{"-p", dir, "-c", conf, "-e", errLog}}, errLog, nil
}

func nginxListenOpts(p proto) string {
	if p == protoHTTP1 {
		return ""
	}
	return " http2"
}

func nginxLocation(p proto) string {
	if p == protoGRPC {
		return "            grpc_pass grpc://app;"
	}
	return `            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";`
}
