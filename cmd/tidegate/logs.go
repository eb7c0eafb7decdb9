package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// loggers are the sidecar's two log streams: operational logs (levelled and
// sampled, so a failing app cannot flood them) and the access log (one line
// per request, never sampled, independent of --log-level).
type loggers struct {
	log    *zap.Logger
	access *zap.Logger // nil when the access log is off
	close  func() error
}

func newLoggers(c *Config, stdout, stderr io.Writer) (*loggers, error) {
	var level zapcore.Level
	if err := level.UnmarshalText([]byte(c.Log.Level)); err != nil {
		return nil, usagef("--log-level: %q is not one of debug, info, warn, error", c.Log.Level)
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
	core := zapcore.NewSamplerWithOptions(zapcore.NewCore(newEnc(), out, level), time.Second, 100, 100)
	l := &loggers{
		log:   zap.New(core, zap.ErrorOutput(errOut)),
		close: func() error { return nil },
	}
	var sink zapcore.WriteSyncer
	switch c.AccessLog {
	case off:
		return l, nil
	case "stdout":
		sink = out
	case "stderr":
		sink = errOut
	default:
		f, err := os.OpenFile(c.AccessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open access log: %w", err)
		}
		sink = zapcore.Lock(f)
		l.close = f.Close
	}
	l.access = zap.New(zapcore.NewCore(newEnc(), sink, zapcore.InfoLevel), zap.ErrorOutput(errOut)).Named("access")
	return l, nil
}

// sync flushes both streams and closes an access log file.
func (l *loggers) sync() {
	_ = l.log.Sync()
	if l.access != nil {
		_ = l.access.Sync()
	}
	_ = l.close()
}
