package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/tidegate/tidegate/drain"
)

// What each signal does to `tidegate run` (docs/signals.md has the table).
// No signal that a person or a tool may send by mistake ends tidegate
// without a drain: SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE and SIGWINCH are all
// caught. SIGQUIT keeps Go's meaning (dump goroutines, exit 2) for
// debugging; SIGKILL cannot be caught, and the app child then dies with
// tidegate (parent-death signal).
type sigAction int

const (
	actDrain   sigAction = iota // SIGTERM, SIGINT: drain; a second one stops now
	actReload                   // SIGHUP: reload the config
	actReopen                   // SIGUSR1: reopen the access log file (logrotate)
	actForward                  // a --forward-signals signal: to the app child
	actIgnore                   // SIGUSR2, SIGPIPE, SIGWINCH: logged at debug, else nothing
)

// handledSignals are the signals main asks to receive.
func handledSignals() []os.Signal {
	return []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2,
		syscall.SIGPIPE, syscall.SIGWINCH}
}

// forwardable are the signals --forward-signals accepts: the ones apps use
// for their own reloads and reopens. SIGTERM and SIGINT are the drain's.
var forwardable = []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

// parseForwardSignals parses --forward-signals.
func parseForwardSignals(names []string) ([]syscall.Signal, error) {
	var out []syscall.Signal
	for _, n := range names {
		sig, err := drain.ParseSignal(n)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(forwardable, sig) {
			return nil, fmt.Errorf("%s cannot be forwarded: give some of SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH (SIGTERM and SIGINT start the drain, which signals the app when it is done)", strings.ToUpper(n))
		}
		if !slices.Contains(out, sig) {
			out = append(out, sig)
		}
	}
	return out, nil
}

// signalAction says what sig does now.
func (s *sidecar) signalAction(sig os.Signal) sigAction {
	ss, ok := sig.(syscall.Signal)
	if !ok {
		return actIgnore
	}
	if slices.Contains(s.forward, ss) {
		return actForward
	}
	switch ss {
	case syscall.SIGTERM, syscall.SIGINT:
		return actDrain
	case syscall.SIGHUP:
		return actReload
	case syscall.SIGUSR1:
		return actReopen
	}
	return actIgnore
}

// forwardSignal passes sig to the app child.
func (s *sidecar) forwardSignal(sig os.Signal) {
	name := signalName(sig)
	log := s.log.Named("app")
	if s.child == nil {
		log.Warn("signal not forwarded: no app child", zap.String("signal", name), zap.String("reason", "no_child"))
		return
	}
	if err := s.child.Signal(sig.(syscall.Signal)); err != nil {
		log.Warn("signal not forwarded", zap.String("signal", name), zap.String("reason", "forward_failed"), zap.Error(err))
		return
	}
	log.Info("signal forwarded to the app", zap.String("signal", name), zap.Int("pid", s.child.Pid()))
}

// reopenLogs reopens the access log file, for logrotate's postrotate.
func (s *sidecar) reopenLogs(trigger string) {
	dest := s.live().AccessLog
	if err := s.logs.sink.open(dest); err != nil {
		s.log.Error("access log not reopened", zap.String("reason", "access_log"), zap.String("trigger", trigger), zap.Error(err))
		return
	}
	s.log.Info("access log reopened", zap.String("trigger", trigger), zap.String("access_log", dest))
}
