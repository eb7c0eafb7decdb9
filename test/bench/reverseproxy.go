package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

// runReverseProxy is the reference proxy: a plain httputil.ReverseProxy
// that accepts HTTP/1.1 and h2c on -listen and forwards to -upstream over
// h2c (prior knowledge; the gRPC workload) or HTTP/1.1 (-upstream-protocol
// http1; the other workloads, with Options.ReverseProxyAll). It runs until
// ctx ends.
func runReverseProxy(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("reverseproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	upstream := fs.String("upstream", "", "the app's host:port")
	protocol := fs.String("upstream-protocol", "h2c", "h2c or http1")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *upstream == "" || (*protocol != "h2c" && *protocol != "http1") {
		return errors.New("reverseproxy: need -upstream, and -upstream-protocol h2c or http1")
	}
	target := &url.URL{Scheme: "http", Host: *upstream}

	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(*protocol == "h2c")
	tr.Protocols.SetHTTP1(*protocol == "http1")
	defer tr.CloseIdleConnections()

	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: tr,
		ErrorLog:  log.New(stderr, "reverseproxy: ", 0),
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second, ErrorLog: rp.ErrorLog}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", *listen)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout/2)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	return nil
}
