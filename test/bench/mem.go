package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Memory sampling: after each step, wait memSettle, then take memSamples
// samples of VmRSS memInterval apart and keep the median.
const (
	memSettle   = time.Second
	memSamples  = 5
	memInterval = 200 * time.Millisecond
	memParallel = 64 // connections being opened at once
)

// memPart is the result of one part of the memory mode.
type memPart struct {
	Proto       proto
	Conns       int
	BaselineKiB int64 // tidegate's RSS before the connections
	AfterKiB    int64 // with the connections open and idle
	FDs         int   // tidegate's open file descriptors with them
}

func (m memPart) perConnKiB() float64 {
	return float64(m.AfterKiB-m.BaselineKiB) / float64(m.Conns)
}

// runMem measures the RSS of idle connections through tidegate: first
// Options.MemHTTP1Conns HTTP/1.1 keep-alive connections, then (with a new
// tidegate) Options.MemH2CConns h2c connections.
func (b *bench) runMem(ctx context.Context, progress io.Writer) ([]memPart, error) {
	var parts []memPart
	for _, p := range []struct {
		proto proto
		n     int
	}{{protoHTTP1, b.opts.MemHTTP1Conns}, {protoH2C, b.opts.MemH2CConns}} {
		fmt.Fprintf(progress, "memory: %d idle %s connections\n", p.n, p.proto)
		part, err := b.memPart(ctx, p.proto, p.n)
		if err != nil {
			return parts, err
		}
		parts = append(parts, part)
	}
	return parts, nil
}

// memPart starts tidegate alone (not pinned, GOMAXPROCS unchanged), takes
// its baseline RSS, opens n connections that each make one request over p
// and then stay idle, and takes its RSS again.
func (b *bench) memPart(ctx context.Context, p proto, n int) (res memPart, err error) {
	res = memPart{Proto: p, Conns: n}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return res, err
	}
	if lim.Cur < uint64(n)+1024 {
		return res, fmt.Errorf("open files limit %d is too low for %d connections", lim.Cur, n)
	}
	listen, err := freePort()
	if err != nil {
		return res, err
	}
	b.seq++
	r := &running{addr: listen, kind: pathTidegate, log: filepath.Join(b.tmp, "tidegate-mem-"+strconv.Itoa(b.seq)+".log")}
	if r.pr, err = b.procs.start(procSpec{Name: "tidegate", CPU: -1, Bin: b.tidegate,
		// The measurement holds n idle connections on purpose: a limit above
		// them, not the default one derived from the open-file limit.
		Args: append(tidegateArgs(listen, b.appHTTP), "--max-connections", strconv.Itoa(n+64)), Log: r.log}); err != nil {
		return res, err
	}
	defer func() {
		if stopErr := b.stop(r, "memory "+p.String()); err == nil && stopErr != nil {
			b.notes.add("memory %s: %v", p, stopErr)
		}
	}()
	if err := waitReady(ctx, r.pr, p, listen, "/1k", true); err != nil {
		return res, fmt.Errorf("tidegate does not work: %w", err)
	}
	if res.BaselineKiB, err = settledRSS(ctx, r.pr.pid()); err != nil {
		return res, err
	}
	open := openHTTP1
	if p == protoH2C {
		open = openH2C
	}
	conns, err := openConns(ctx, n, func(ctx context.Context) (io.Closer, error) { return open(ctx, listen) })
	defer closeAll(conns)
	if err != nil {
		return res, fmt.Errorf("open %d %s connections: %w", n, p, err)
	}
	if res.AfterKiB, err = settledRSS(ctx, r.pr.pid()); err != nil {
		return res, err
	}
	if res.FDs, err = countFDs(r.pr.pid()); err != nil {
		return res, err
	}
	if res.FDs < n {
		return res, fmt.Errorf("tidegate holds %d file descriptors, fewer than the %d connections", res.FDs, n)
	}
	return res, nil
}

// settledRSS waits memSettle, then returns the median of memSamples VmRSS
// samples of pid.
func settledRSS(ctx context.Context, pid int) (int64, error) {
	next := time.Now().Add(memSettle)
	var s []int64
	for range memSamples {
		if err := sleepUntil(ctx, next); err != nil {
			return 0, err
		}
		kib, err := readStatusKiB(pid, "VmRSS")
		if err != nil {
			return 0, err
		}
		s = append(s, kib)
		next = next.Add(memInterval)
	}
	slices.Sort(s)
	return s[len(s)/2], nil
}

// openConns opens n connections with open, memParallel at a time. On
// error it returns the connections opened so far with the first error.
func openConns(ctx context.Context, n int, open func(context.Context) (io.Closer, error)) ([]io.Closer, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next  atomic.Int64
		mu    sync.Mutex
		conns []io.Closer
		wg    sync.WaitGroup
	)
	for range memParallel {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				c, err := open(ctx)
				if err != nil {
					cancel(err)
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return conns, context.Cause(ctx)
}

func closeAll(cs []io.Closer) {
	for _, c := range cs {
		c.Close()
	}
}

// openHTTP1 opens a connection to addr, sends GET /1k over HTTP/1.1, reads
// the whole response, and returns the connection, left open and idle.
func openHTTP1(ctx context.Context, addr string) (io.Closer, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	err = func() error {
		if err := c.SetDeadline(deadline); err != nil {
			return err
		}
		if _, err := io.WriteString(c, "GET /1k HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if n, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK || n != smallBody || resp.Close {
			return fmt.Errorf("GET /1k: %s, %d bytes, close %v, %v", resp.Status, n, resp.Close, err)
		}
		return c.SetDeadline(time.Time{})
	}()
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// h2cConn is one client connection, the only one of its Transport.
type h2cConn struct{ tr *http.Transport }

func (h h2cConn) Close() error { h.tr.CloseIdleConnections(); return nil }

// openH2C makes one h2c (prior knowledge) request to addr on a Transport of
// its own, and returns it with its connection left open and idle.
func openH2C(ctx context.Context, addr string) (io.Closer, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	tr := &http.Transport{DialContext: (&net.Dialer{}).DialContext}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/1k", nil)
		if err != nil {
			return err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if n, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || n != smallBody {
			return fmt.Errorf("GET /1k: %s %s, %d bytes, %v", resp.Proto, resp.Status, n, err)
		}
		return nil
	}()
	if err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	return h2cConn{tr}, nil
}
