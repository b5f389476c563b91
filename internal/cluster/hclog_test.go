package cluster

import (
	"testing"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// raft logs some values as hclog.Fmt("%+v", x); they must reach zap
// formatted, not as the format and its arguments.
func TestHCLoggerFormatsFmtValues(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	l := HCLogger(zap.New(core))
	l.Info("initial configuration", "index", 1, "servers", hclog.Fmt("%+v", []struct{ ID string }{{"a"}}))
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d entries", len(entries))
	}
	fields := entries[0].ContextMap()
	if got := fields["servers"]; got != "[{ID:a}]" {
		t.Fatalf("servers = %#v, want the formatted %q", got, "[{ID:a}]")
	}
	if got := fields["index"]; got != int64(1) {
		t.Fatalf("index = %#v", got)
	}
}
