package cluster

import (
	"fmt"
	"io"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapSink forwards hclog records (raft's logger) to zap, keeping raft's
// key/value pairs as structured fields.
type zapSink struct{ log *zap.Logger }

func (s zapSink) Accept(name string, level hclog.Level, msg string, args ...interface{}) {
	var lvl zapcore.Level
	switch level {
	case hclog.Trace, hclog.Debug:
		lvl = zapcore.DebugLevel
	case hclog.Info:
		lvl = zapcore.InfoLevel
	case hclog.Warn:
		lvl = zapcore.WarnLevel
	default:
		lvl = zapcore.ErrorLevel
	}
	ce := s.log.Check(lvl, msg)
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, len(args)/2)
	for i := 0; i+1 < len(args); i += 2 {
		v := args[i+1]
		// hclog.Fmt("%+v", x) is a value to format, not a list.
		if f, ok := v.(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				v = fmt.Sprintf(format, f[1:]...)
			}
		}
		fields = append(fields, zap.Any(fmt.Sprint(args[i]), v))
	}
	ce.Write(fields...)
}

// HCLogger returns an hclog.Logger (raft and autopilot log through one)
// whose records all go to log.
func HCLogger(log *zap.Logger) hclog.Logger {
	level := hclog.Info
	if log.Core().Enabled(zapcore.DebugLevel) {
		level = hclog.Debug
	}
	l := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "raft", Level: level, Output: io.Discard})
	l.RegisterSink(zapSink{log: log})
	return l
}
