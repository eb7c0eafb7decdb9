package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// loggers are the sidecar's two log streams: operational logs (levelled and
// sampled, so a failing app cannot flood them) and the access log (one line
// per request, never sampled, independent of --log-level). A reload changes
// the level and the access log's destination in place.
type loggers struct {
	log    *zap.Logger
	level  zap.AtomicLevel
	access *zap.Logger // nil when the access log is off at start
	sink   *accessSink // the access log's destination
}

func newLoggers(c *Config, stdout, stderr io.Writer) (*loggers, error) {
	level, err := parseLevel(c.Log.Level)
	if err != nil {
		return nil, usageError{err}
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	encCfg.EncodeDuration = zapcore.SecondsDurationEncoder
	newEnc := func() zapcore.Encoder { return zapcore.NewJSONEncoder(encCfg) }
	if c.Log.Format == "console" {
		newEnc = func() zapcore.Encoder { return zapcore.NewConsoleEncoder(encCfg) }
	}
	out := zapcore.Lock(zapcore.AddSync(stdout))
	errOut := zapcore.Lock(zapcore.AddSync(stderr))
	atom := zap.NewAtomicLevelAt(level)
	core := zapcore.NewSamplerWithOptions(zapcore.NewCore(newEnc(), out, atom), time.Second, 100, 100)
	l := &loggers{
		log:   zap.New(core, zap.ErrorOutput(errOut)),
		level: atom,
		sink:  &accessSink{stdout: out, stderr: errOut},
	}
	if err := l.sink.open(c.AccessLog); err != nil {
		return nil, err
	}
	// The access logger exists even when the log is off, so that a reload
	// can turn it on; handlers get it only while it is on.
	l.access = zap.New(zapcore.NewCore(newEnc(), l.sink, zapcore.InfoLevel), zap.ErrorOutput(errOut)).Named("access")
	return l, nil
}

func parseLevel(s string) (zapcore.Level, error) {
	var level zapcore.Level
	if err := level.UnmarshalText([]byte(s)); err != nil {
		return level, fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", s)
	}
	return level, nil
}

// sync flushes both streams and closes an access log file.
func (l *loggers) sync() {
	_ = l.log.Sync()
	_ = l.access.Sync()
	_ = l.sink.close()
}

// accessSink is where access log lines go: stdout, stderr, a file, or
// nowhere. open replaces the destination without losing a line: the new
// file is opened before the old one closes, under the lock every write
// takes, so a reload (or SIGUSR1 after logrotate moved the file) starts a
// new file at once.
type accessSink struct {
	stdout, stderr zapcore.WriteSyncer

	mu   sync.Mutex
	dest string              // "off", "stdout", "stderr" or a path
	w    zapcore.WriteSyncer // nil when off
	file *os.File            // the open file, if dest is a path
}

// open points the sink at dest, reopening a file even when its path is
// the same. On error the old destination stays.
func (a *accessSink) open(dest string) error {
	var w zapcore.WriteSyncer
	var f *os.File
	switch dest {
	case off:
	case "stdout":
		w = a.stdout
	case "stderr":
		w = a.stderr
	default:
		var err error
		f, err = openAppend(dest)
		if err != nil {
			return fmt.Errorf("open access log: %w", err)
		}
		w = f
	}
	a.mu.Lock()
	old := a.file
	a.dest, a.w, a.file = dest, w, f
	a.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

func (a *accessSink) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.w == nil {
		return len(p), nil
	}
	return a.w.Write(p)
}

func (a *accessSink) Sync() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.w == nil {
		return nil
	}
	return a.w.Sync()
}

func (a *accessSink) close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.file
	a.w, a.file = nil, nil
	if f != nil {
		return f.Close()
	}
	return nil
}

// openAppend opens an access log file for appending, creating it if needed.
// A named pipe is opened without waiting for a reader (an error if there is
// none), so that a reload or SIGUSR1 never blocks the event loop on it.
func openAppend(path string) (*os.File, error) {
	flags := os.O_WRONLY | os.O_APPEND | os.O_CREATE
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
		flags |= syscall.O_NONBLOCK
	}
	return os.OpenFile(path, flags, 0o644)
}
