package leader

import (
	"context"
	"errors"
	"maps"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/state"
)

type driftEntry struct {
	at      time.Time
	finding *instance.Finding
}

// inspectDrift inspects running instances for in-place changes, each at
// its fleet's drift interval, and asks for a pass when a finding changes.
func (t *Term) inspectDrift(ctx context.Context) {
	tick := time.NewTicker(driftTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.inspectDue(ctx)
	}
}

// inspectDue inspects every instance whose inspection is due.
func (t *Term) inspectDue(ctx context.Context) {
	// It runs every driftTick: it reads the fleets and the open intents,
	// not a view of every record, and walks the last listing as it is
	// (a pass replaces it, never changes it), in no particular order.
	var fleets map[string]*state.DesiredFleet
	leaving := map[string]bool{}
	t.cfg.Journal.Read(func(st *state.State) {
		fleets = maps.Clone(st.Fleets)
		for _, it := range st.Intents {
			leaving[it.InstanceID] = true
		}
	})
	t.driftMu.Lock()
	observed := t.observed
	t.driftMu.Unlock()
	for _, o := range observed {
		f := fleets[o.Fleet]
		// An instance with an intent open is being launched or removed by
		// immutd itself: its files are in flux, so a look now would only
		// report immutd's own work as drift.
		if f == nil || o.Phase != instance.Running || leaving[o.ID] {
			continue
		}
		insp, ok := t.cfg.Providers[f.Spec.Provider].(DriftInspector)
		if !ok {
			continue
		}
		t.driftMu.Lock()
		prev, seen := t.drift[o.ID]
		t.driftMu.Unlock()
		if seen && t.cfg.Now().Sub(prev.at) < f.Spec.Drift.Interval {
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
		finding, err := insp.Inspect(ictx, o, f.Spec.Drift.IgnorePaths)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, instance.ErrGone) || t.hasOpenIntent(o.ID) {
			// Removed, or being removed, while we looked: not a finding.
			t.log.Debug("drift inspection of an instance that is going", zap.String("fleet", o.Fleet), zap.String("instance_id", o.ID), zap.NamedError("result", err))
			continue
		}
		if err != nil {
			t.log.Warn("drift inspection failed", zap.String("fleet", o.Fleet), zap.String("instance_id", o.ID), zap.Error(err))
		}
		t.driftMu.Lock()
		_, stillThere := t.observed[o.ID]
		if stillThere {
			t.drift[o.ID] = driftEntry{at: t.cfg.Now(), finding: finding}
		}
		t.driftMu.Unlock()
		if stillThere && (finding != nil) != (seen && prev.finding != nil) {
			if finding != nil {
				t.log.Warn("instance drifted", zap.String("fleet", o.Fleet), zap.String("instance_id", o.ID),
					zap.String("reason", "drift_"+finding.Kind), zap.Strings("evidence", finding.Evidence))
			}
			t.cfg.Notify()
		}
	}
}

// hasOpenIntent says whether an intent on the instance is open now.
func (t *Term) hasOpenIntent(id string) bool {
	open := false
	t.cfg.Journal.Read(func(st *state.State) { open = st.OpenIntentFor(id) != nil })
	return open
}

// setObserved publishes the latest provider listing to the drift
// inspector and forgets findings of instances that are gone.
func (t *Term) setObserved(observed map[string]instance.Observed) {
	t.driftMu.Lock()
	defer t.driftMu.Unlock()
	t.observed = observed
	for id := range t.drift {
		if _, ok := observed[id]; !ok {
			delete(t.drift, id)
		}
	}
}

// findings returns the drift findings of the last inspections.
func (t *Term) findings() map[string]*instance.Finding {
	t.driftMu.Lock()
	defer t.driftMu.Unlock()
	out := make(map[string]*instance.Finding, len(t.drift))
	for id, d := range t.drift {
		out[id] = d.finding
	}
	return out
}
