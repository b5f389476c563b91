package leader

import (
	"testing"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/reconcile"
)

// TestStatusCountsTheIntentsOfThePass: what a pass started shows in its
// own snapshot and metrics, as launching and terminating.
func TestStatusCountsTheIntentsOfThePass(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 2))
	last := func() api.Fleet {
		t.Helper()
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.snaps[len(r.snaps)-1].Fleets()[0]
	}
	check := func(step string, want map[string]int, rows map[string]int) {
		t.Helper()
		f := last()
		for s, n := range want {
			if f.States[s] != n {
				t.Errorf("%s: states %v, want %v", step, f.States, want)
				break
			}
		}
		got := map[string]int{}
		for _, in := range f.Instances {
			got[in.State]++
		}
		for s, n := range rows {
			if got[s] != n {
				t.Errorf("%s: rows by state %v, want %v", step, got, rows)
				break
			}
		}
		for s, n := range r.m.fleets["web"].States {
			if f.States[string(s)] != n {
				t.Errorf("%s: metrics %v differ from status %v", step, r.m.fleets["web"].States, f.States)
				break
			}
		}
	}
	r.step()
	check("launch", map[string]int{"launching": 2, "healthy": 0}, map[string]int{"launching": 2})
	for _, in := range last().Instances {
		if in.Intent != "launch: scale_up" {
			t.Errorf("launch row %+v", in)
		}
	}
	r.step()
	check("healthy", map[string]int{"healthy": 2, "launching": 0}, map[string]int{"healthy": 2})

	sick := last().Instances[0].ID
	r.judge.set(sick, reconcile.Unhealthy)
	r.step() // its replacement is launched first
	check("replacement", map[string]int{"healthy": 1, "unhealthy": 1, "launching": 1}, map[string]int{"healthy": 1, "unhealthy": 1, "launching": 1})
	r.step() // the replacement is healthy: the sick one goes
	check("kill", map[string]int{"healthy": 2, "unhealthy": 0, "terminating": 1}, map[string]int{"healthy": 2, "terminating": 1})
	for _, in := range last().Instances {
		if in.ID == sick && (in.State != "terminating" || in.Intent != "terminate: unhealthy") {
			t.Errorf("killed row %+v", in)
		}
	}
}
