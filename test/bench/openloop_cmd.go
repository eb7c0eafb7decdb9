package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// requestTimeout bounds one request of the Go load generators.
const requestTimeout = 5 * time.Second

var errBadStatus = errors.New("status not 200")

// runOpenLoopCmd is the open-loop load generator: HTTP/1.1 GET -path on
// -addr at -rate requests per second for -duration, over at most -conns
// keep-alive connections. It prints its measurement as JSON.
//
// It opens every connection, with one request each that it does not
// count, before the schedule begins, as wrk does: the schedule's first
// requests would otherwise each open one, and a burst of -conns new
// connections in the first milliseconds, which the proxy's warm-up run
// (another process, other connections) does not spare it, would weigh on
// the tail of a short run. What the workload measures is a proxy's
// latency on its connections, not its accept path.
func runOpenLoopCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("openloop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "host:port")
	path := fs.String("path", "/1k", "request path")
	rate := fs.Float64("rate", 1000, "requests per second")
	d := fs.Duration("duration", 10*time.Second, "length of the schedule")
	conns := fs.Int("conns", 64, "keep-alive connections (and so workers)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *rate <= 0 || *d <= 0 || *conns < 1 {
		return errors.New("openloop: need -addr, and a positive -rate, -duration and -conns")
	}
	// Requests still unsent this long after the schedule's end count as
	// errors.
	ctx, cancel := context.WithTimeout(ctx, *d+requestTimeout)
	defer cancel()

	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + *addr + "\r\nUser-Agent: tidegate-bench\r\n\r\n")
	all := make([]*h1conn, *conns)
	for i := range all {
		all[i] = &h1conn{addr: *addr, req: req}
	}
	defer func() {
		for _, c := range all {
			c.close()
		}
	}()
	if err := connectAll(ctx, all); err != nil {
		return err
	}
	next := 0
	newSender := func() sender { // called once per worker, on this goroutine
		c := all[next]
		next++
		return c.do
	}
	s := newSchedule(time.Now().Add(10*time.Millisecond), *rate, *d)
	res := openLoop(ctx, s, *conns, newSender)
	return json.NewEncoder(stdout).Encode(res.measurement(*rate))
}

// connectAll opens each connection of cs with one request, all at once,
// and fails with the first error.
func connectAll(ctx context.Context, cs []*h1conn) error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() { errs[i] = c.do(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("openloop: opening connection %d of %d: %w", i+1, len(cs), err)
		}
	}
	return nil
}

// h1conn is one keep-alive HTTP/1.1 connection that sends the same request
// again and again, and dials again after an error.
type h1conn struct {
	addr string
	req  []byte
	c    net.Conn
	br   *bufio.Reader
}

// do sends the request and reads the whole response within requestTimeout.
// Anything but a 200 is an error.
func (h *h1conn) do(ctx context.Context) error {
	if h.c == nil {
		dctx, cancel := context.WithTimeout(ctx, requestTimeout)
		c, err := (&net.Dialer{}).DialContext(dctx, "tcp", h.addr)
		cancel()
		if err != nil {
			return err
		}
		h.c, h.br = c, bufio.NewReaderSize(c, 16<<10)
	}
	if err := h.roundTrip(); err != nil {
		h.close()
		return err
	}
	return nil
}

func (h *h1conn) roundTrip() error {
	if err := h.c.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return err
	}
	if _, err := h.c.Write(h.req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s", errBadStatus, resp.Status)
	}
	if resp.Close {
		h.close() // the server said Connection: close; dial again next time
	}
	return nil
}

func (h *h1conn) close() {
	if h.c != nil {
		h.c.Close()
		h.c, h.br = nil, nil
	}
}
