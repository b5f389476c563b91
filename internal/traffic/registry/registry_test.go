package registry

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/immutd/immutd/internal/state"
)

func fleet(t *testing.T, tr *state.TrafficSpec) *state.DesiredFleet {
	return &state.DesiredFleet{Spec: state.FleetSpec{Name: "web", Traffic: tr}}
}

func TestForBuildsOncePerSpecAndNamesBackends(t *testing.T) {
	r := New(nil)
	defer r.Close()
	dir := t.TempDir()
	tr := &state.TrafficSpec{Files: []state.TrafficFile{{Name: "targets", Path: filepath.Join(dir, "web.json")}},
		HAProxy: []state.TrafficHAProxy{{Name: "edge", Socket: "/run/haproxy/admin.sock", Backend: "web"}},
		Consul:  []state.TrafficConsul{{Name: "catalog", Address: "127.0.0.1:8500", Service: "web"}}}
	bs, err := r.For(fleet(t, tr))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range bs {
		names = append(names, b.Name())
	}
	if got := strings.Join(names, ", "); got != `file "targets", haproxy "edge", consul "catalog"` {
		t.Fatalf("backends %s", got)
	}
	again, _ := r.For(fleet(t, tr))
	if again[0] != bs[0] {
		t.Fatal("the same spec built new backends")
	}
	changed := *tr
	changed.HAProxy = nil
	bs2, _ := r.For(fleet(t, &changed))
	if len(bs2) != 2 || bs2[0] == bs[0] {
		t.Fatalf("a changed spec kept the old backends: %d", len(bs2))
	}
	if none, err := r.For(fleet(t, nil)); none != nil || err != nil {
		t.Fatalf("a fleet without traffic: %v %v", none, err)
	}
}

func TestForNamesTheFleetOfABadBackend(t *testing.T) {
	r := New(nil)
	defer r.Close()
	_, err := r.For(fleet(t, &state.TrafficSpec{Consul: []state.TrafficConsul{{Name: "c", Address: "127.0.0.1:8500", Service: "web",
		TokenFile: filepath.Join(t.TempDir(), "missing-token")}}}))
	if err == nil || !strings.HasPrefix(err.Error(), "fleet web: ") || !strings.Contains(err.Error(), "missing-token") {
		t.Fatalf("error %v", err)
	}
}
