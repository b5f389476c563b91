package leader

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic"
)

// syncTimeout bounds one backend's level-based sync.
const syncTimeout = 30 * time.Second

// trafficState is the term's view of the fleets' traffic backends: the
// last sync error of each backend, and the connections draining
// instances still have.
type trafficState struct {
	mu       sync.Mutex
	syncing  map[traffic.Backend]bool
	syncErr  map[string]map[string]string // fleet -> backend -> error
	conns    map[string]int
	unusable map[string]string // fleet -> why its backends could not be built
}

func newTrafficState() *trafficState {
	return &trafficState{syncing: map[traffic.Backend]bool{}, syncErr: map[string]map[string]string{},
		conns: map[string]int{}, unusable: map[string]string{}}
}

// connections records the connections a draining instance has left.
func (ts *trafficState) connections(_, id string, n int) {
	ts.mu.Lock()
	ts.conns[id] = n
	ts.mu.Unlock()
}

// syncTraffic starts the level-based sync of every gated fleet's
// backends: admitted instances (no drain open) are kept in traffic with
// the current verdict, and entries of instances the fleet does not know
// any more are removed. A backend whose previous sync still runs is
// skipped this pass.
func (t *Term) syncTraffic(ctx context.Context, v view, judged map[string]Judgement) {
	if t.cfg.Backends == nil {
		return
	}
	gated := map[string]bool{}
	for name, d := range v.fleets {
		if d.Spec.Traffic.Gated() {
			gated[name] = true
		}
	}
	if len(gated) == 0 {
		return
	}
	// What each gated fleet knows of (its entries of other instances are
	// removed from its backends) and admits, in one look at each list.
	known := map[string]map[string]bool{}
	note := func(fleet, id string) {
		if !gated[fleet] {
			return
		}
		if known[fleet] == nil {
			known[fleet] = map[string]bool{}
		}
		known[fleet][id] = true
	}
	draining := map[string]bool{}
	for _, it := range v.intents {
		note(it.Fleet, it.InstanceID)
		if it.Kind == state.Drain {
			draining[it.InstanceID] = true
		}
	}
	admittedBy := map[string][]*state.Instance{}
	for id, r := range v.records {
		note(r.Fleet, id)
		if gated[r.Fleet] && r.Admitted && !draining[id] {
			admittedBy[r.Fleet] = append(admittedBy[r.Fleet], r)
		}
	}
	t.driftMu.Lock()
	for id, o := range t.observed {
		note(o.Fleet, id)
	}
	t.driftMu.Unlock()
	ts := t.traffic
	for name, d := range v.fleets {
		if !d.Spec.Traffic.Gated() {
			continue
		}
		bs, err := t.cfg.Backends.For(d)
		ts.mu.Lock()
		if err != nil {
			ts.unusable[name] = err.Error()
		} else {
			delete(ts.unusable, name)
		}
		ts.mu.Unlock()
		if err != nil {
			continue
		}
		var admitted []traffic.Member
		for _, r := range admittedBy[name] {
			admitted = append(admitted, traffic.Member{Fleet: name, InstanceID: r.ID, Address: r.Address, ImageDigest: r.ImageDigest,
				Version: r.Image, Healthy: judged[r.ID].Health == reconcile.Healthy, Canary: reconcile.IsCanary(d, r.ImageDigest, r.TemplateHash)})
		}
		sort.Slice(admitted, func(i, j int) bool { return admitted[i].InstanceID < admitted[j].InstanceID })
		keep := known[name]
		for _, b := range bs {
			ts.mu.Lock()
			busy := ts.syncing[b]
			ts.syncing[b] = true
			ts.mu.Unlock()
			if busy {
				continue
			}
			fleet := name
			t.goRun(func() {
				sctx, cancel := context.WithTimeout(ctx, syncTimeout)
				err := b.Sync(sctx, admitted, func(id string) bool { return keep[id] })
				cancel()
				ts.mu.Lock()
				delete(ts.syncing, b)
				prev := ts.syncErr[fleet][b.Name()]
				if ctx.Err() == nil {
					if err != nil {
						if ts.syncErr[fleet] == nil {
							ts.syncErr[fleet] = map[string]string{}
						}
						ts.syncErr[fleet][b.Name()] = err.Error()
					} else {
						delete(ts.syncErr[fleet], b.Name())
					}
				}
				ts.mu.Unlock()
				switch {
				case ctx.Err() != nil:
				case err != nil && prev == "":
					t.log.Warn("traffic backend sync failed", zap.String("fleet", fleet), zap.String("backend", b.Name()),
						zap.Bool("unreachable", errors.Is(err, traffic.ErrUnreachable)), zap.Error(err))
				case err == nil && prev != "":
					t.log.Info("traffic backend in sync again", zap.String("fleet", fleet), zap.String("backend", b.Name()))
				}
			})
		}
	}
}

// trafficBlocks are the fleet's backend problems, for status.
func (ts *trafficState) blocks(fleet string) []string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var out []string
	if why := ts.unusable[fleet]; why != "" {
		out = append(out, "traffic backends unusable: "+why)
	}
	names := make([]string, 0, len(ts.syncErr[fleet]))
	for n := range ts.syncErr[fleet] {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, n+": "+ts.syncErr[fleet][n])
	}
	return out
}

func (ts *trafficState) connectionsOf(id string) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.conns[id]
}
