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
// default of 1000 would close every connection after 1000 requests. Like
// tidegate it adds X-Forwarded-For, -Proto and -Host and an X-Request-Id
// (nginx's own $request_id, 32 hex digits, unless the client sent one),
// which it also puts on the answer.
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
    map $http_x_request_id $bench_request_id {
        default $http_x_request_id;
        ""      $request_id;
    }
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
	set := "proxy_set_header"
	if p == protoGRPC {
		set = "grpc_set_header"
	}
	headers := fmt.Sprintf(`            %[1]s X-Forwarded-For $proxy_add_x_forwarded_for;
            %[1]s X-Forwarded-Proto $scheme;
            %[1]s X-Forwarded-Host $http_host;
            %[1]s X-Request-Id $bench_request_id;
            add_header X-Request-Id $bench_request_id always;
`, set)
	if p == protoGRPC {
		return headers + "            grpc_pass grpc://app;"
	}
	return headers + `            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";`
}
