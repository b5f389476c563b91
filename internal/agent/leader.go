package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/cluster"
	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// leadership runs exactly one leader term at a time: on gaining
// leadership it starts a term, on losing it the term's context is
// cancelled and the agent waits for the term's work to stop before
// anything else happens.
func (a *Agent) leadership(ctx context.Context) error {
	type running struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	var cur *running
	stop := func() {
		if cur == nil {
			return
		}
		cur.cancel()
		<-cur.done
		cur = nil
		a.m.isLeader.Set(0)
		a.m.clearLeaderSeries()
		a.mu.Lock()
		a.lastStatus, a.lastPass = nil, time.Time{}
		a.mu.Unlock()
		a.log.Info("leadership lost; leader work stopped")
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case leader := <-a.node.LeadershipChanges():
			stop()
			if !leader {
				continue
			}
			tctx, cancel := context.WithCancel(ctx)
			cur = &running{cancel: cancel, done: make(chan struct{})}
			a.m.isLeader.Set(1)
			go func(done chan struct{}) {
				defer close(done)
				a.leaderTerm(tctx)
			}(cur.done)
		}
	}
}

// term is the leader-only state of one leadership term.
type term struct {
	a    *Agent
	exec *reconcile.Executor
	log  *zap.Logger

	// drift inspection results, filled in the background.
	driftMu  sync.Mutex
	drift    map[string]driftEntry
	observed map[string]instance.Observed
	// blocked causes last recorded per fleet, to log transitions.
	blocked map[string]string
	// lastResolveTry limits retries of failed image resolution.
	lastResolveTry time.Time
	// lastRefCheck limits checks of whether image references moved;
	// moved remembers the digests already reported per fleet.
	lastRefCheck time.Time
	moved        map[string]string
	pilot        *autopilot.Autopilot
	// judged are the cluster's verdicts of the last pass.
	judged map[string]judgement
	// watching lists the providers whose event streams wake the loop.
	watching map[string]bool
	// mu guards listBackoff, which event streams also touch.
	mu          sync.Mutex
	listBackoff map[string]*listRetry
	start       time.Time
	passes      int
}

type driftEntry struct {
	at      time.Time
	finding *instance.Finding
	err     error
}

func (a *Agent) leaderTerm(ctx context.Context) {
	log := a.log.Named("leader")
	start := time.Now()
	// Everything committed by earlier leaders must be applied locally
	// before this node decides anything.
	for {
		err := a.node.Barrier(time.Minute)
		if err == nil {
			break
		}
		log.Warn("barrier failed; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	t := &term{a: a, log: log, drift: map[string]driftEntry{}, blocked: map[string]string{}, moved: map[string]string{}, start: start,
		lastResolveTry: time.Now(), lastRefCheck: time.Now()}
	t.exec = reconcile.NewExecutor(reconcile.ExecutorOptions{Journal: a.node, Providers: a.providers, Node: a.cfg.NodeName,
		Logger: a.log.Named("executor"), Observer: t, Wake: a.Wake})
	a.votes.reset()
	if a.cfg.Cluster.Multi() {
		t.pilot = autopilot.New(a.node.Raft(), &pilotDelegate{a: a, lastSeen: map[raft.ServerID]time.Time{}},
			autopilot.WithLogger(cluster.HCLogger(a.log.Named("autopilot"))))
		t.pilot.Start(ctx)
		defer func() { <-t.pilot.Stop() }()
	}
	a.term.Store(t)
	defer a.term.Store(nil)
	log.Info("leadership established", zap.Uint64("term", a.node.Term()), zap.Float64("duration_seconds", time.Since(start).Seconds()))
	defer t.exec.Wait()

	go t.inspectDrift(ctx)
	a.Wake()
	for {
		a.mu.Lock()
		interval := a.interval
		a.mu.Unlock()
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-a.wake:
		case <-timer.C:
		}
		timer.Stop()
		if err := t.pass(ctx); err != nil && ctx.Err() == nil {
			log.Warn("reconcile pass failed", zap.Error(err))
			continue
		}
		if t.passes++; t.passes == 1 {
			t.announce(ctx)
		}
		t.housekeeping(ctx)
	}
}

// announce records that this leader finished its first reconcile pass:
// the end of a failover, as operators and benchmarks see it.
func (t *term) announce(ctx context.Context) {
	now := time.Now()
	ev := state.Event{Time: now, Action: "leader_ready", Reason: "leadership_established", Node: t.a.cfg.NodeName,
		Evidence: []string{fmt.Sprintf("term %d", t.a.node.Term()), fmt.Sprintf("first reconcile pass done %dms after becoming leader", now.Sub(t.start).Milliseconds())}}
	if _, err := t.a.node.Apply(ctx, &state.RecordEvents{Events: []state.Event{ev}}); err != nil && ctx.Err() == nil {
		t.log.Warn("could not record leader_ready", zap.Error(err))
	}
	t.log.Info("leader ready", zap.Float64("duration_seconds", now.Sub(t.start).Seconds()))
}

// housekeeping retries failed image resolutions and reports image
// references that moved to other content.
func (t *term) housekeeping(ctx context.Context) {
	if time.Since(t.lastResolveTry) >= resolveRetry {
		t.lastResolveTry = time.Now()
		if err := t.repin(ctx, nil); err != nil && ctx.Err() == nil {
			t.log.Warn("re-resolving images failed", zap.Error(err))
		}
	}
	if time.Since(t.lastRefCheck) >= refCheckInterval {
		t.lastRefCheck = time.Now()
		t.checkRefs(ctx)
	}
}

// refCheckInterval is how often the leader checks whether a docker fleet's
// image reference (a tag) now names other content. Local bundles are not
// re-hashed in the background: a bundle is re-pinned only when the fleet
// file changes or an operator runs `immutd fleet resolve`.
const refCheckInterval = 30 * time.Second

// checkRefs resolves every fleet's image reference again without pinning
// it: a tag moved to other content is reported (event and metric), never
// rolled out by itself. `immutd fleet resolve` or an edit of the fleet
// file rolls it.
func (t *term) checkRefs(ctx context.Context) {
	v := t.a.readView()
	for _, name := range sortedKeys(v.fleets) {
		f := v.fleets[name]
		if f.Unconfigured || f.ImageDigest == "" || f.ResolveError != "" || f.Spec.Provider != "docker" {
			continue
		}
		res, ok := t.a.providers[f.Spec.Provider].(reconcile.ImageResolver)
		if !ok {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		now, err := res.Resolve(rctx, f.Spec.Image)
		cancel()
		if err != nil {
			continue
		}
		if now == f.ImageDigest {
			t.a.m.imageRefMoved.WithLabelValues(name).Set(0)
			delete(t.moved, name)
			continue
		}
		t.a.m.imageRefMoved.WithLabelValues(name).Set(1)
		if t.moved[name] == now {
			continue
		}
		t.moved[name] = now
		t.log.Warn("image reference moved; the fleet keeps its pinned image", zap.String("fleet", name), zap.String("image", f.Spec.Image),
			zap.String("pinned", f.ImageDigest), zap.String("now", now), zap.String("reason", "image_ref_moved"))
		ev := state.Event{Time: time.Now(), Fleet: name, Action: "image_ref_moved", Reason: "not_rolled", Node: t.a.cfg.NodeName,
			Evidence: []string{"reference " + f.Spec.Image, "pinned " + f.ImageDigest, "now resolves to " + now,
				"run `immutd fleet resolve " + name + "` or change the fleet file to roll"}}
		if _, err := t.a.node.Apply(ctx, &state.RecordEvents{Events: []state.Event{ev}}); err != nil && ctx.Err() == nil {
			t.log.Warn("could not record event", zap.Error(err))
		}
	}
}

// Resolve re-pins a fleet's image reference (an operator's explicit
// request after a tag moved).
func (a *Agent) Resolve(ctx context.Context, fleet string) error {
	if err := checkFleetName(fleet); err != nil {
		return err
	}
	if !a.node.IsLeader() {
		if err := a.forwardJSON(ctx, "/cluster/v1/resolve", map[string]string{"fleet": fleet}, nil); !errors.Is(err, errBecameLeader) {
			return err
		}
	}
	t := a.currentTerm()
	if t == nil {
		return errNotReady
	}
	v := a.readView()
	if v.fleets[fleet] == nil {
		return fmt.Errorf("fleet %q is not known", fleet)
	}
	return t.repin(ctx, map[string]bool{fleet: true})
}

func (a *Agent) pilot() *autopilot.Autopilot {
	if t := a.currentTerm(); t != nil {
		return t.pilot
	}
	return nil
}

// listRetry is a provider's List backoff while it fails: nothing of its
// fleets is launched or terminated meanwhile.
type listRetry struct {
	wait  time.Duration
	until time.Time
	err   string
}

const (
	listBackoffMin = 500 * time.Millisecond
	listBackoffMax = 8 * time.Second
)

// listWaiting returns the last error and the wait when a provider's List
// is backing off, "" when it is due.
func (t *term) listWaiting(name string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if b := t.listBackoff[name]; b != nil && time.Now().Before(b.until) {
		return fmt.Sprintf("%s (next attempt in %s)", b.err, time.Until(b.until).Round(100*time.Millisecond))
	}
	return ""
}

func (t *term) listOK(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.listBackoff[name] != nil {
		t.log.Info("provider reachable again", zap.String("provider", name))
		delete(t.listBackoff, name)
	}
}

func (t *term) backOffList(name string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.listBackoff == nil {
		t.listBackoff = map[string]*listRetry{}
	}
	b := t.listBackoff[name]
	if b == nil {
		b = &listRetry{wait: listBackoffMin}
		t.log.Warn("provider unreachable; nothing of its fleets is launched or terminated until it answers",
			zap.String("provider", name), zap.String("reason", "provider_unreachable"), zap.Error(err))
	} else {
		b.wait = min(2*b.wait, listBackoffMax)
	}
	b.until, b.err = time.Now().Add(b.wait), err.Error()
	t.listBackoff[name] = b
}

// providerEvent is a provider's event stream speaking: it is reachable,
// so a List backoff ends.
func (t *term) providerEvent(name string) {
	t.mu.Lock()
	if b := t.listBackoff[name]; b != nil {
		b.until = time.Time{}
	}
	t.mu.Unlock()
	t.a.Wake()
}

// eventSource is the optional provider capability of pushing events
// (a container died) so the loop reacts at once; the periodic pass
// remains the source of truth.
type eventSource interface {
	Watch(ctx context.Context, notify func())
}

func (t *term) watchEvents(ctx context.Context, used map[string]bool) {
	for name := range used {
		if t.watching[name] {
			continue
		}
		src, ok := t.a.providers[name].(eventSource)
		if !ok {
			continue
		}
		if t.watching == nil {
			t.watching = map[string]bool{}
		}
		t.watching[name] = true
		go src.Watch(ctx, func() { t.providerEvent(name) })
	}
}

// Finished implements reconcile.Observer.
func (t *term) Finished(it *state.Intent, outcome state.Outcome, took time.Duration) {
	t.a.m.intentsFinished.WithLabelValues(string(it.Kind), string(outcome)).Inc()
	prov := ""
	t.a.node.Read(func(st *state.State) {
		if f := st.Fleets[it.Fleet]; f != nil {
			prov = f.Spec.Provider
		}
	})
	t.a.m.providerCall.WithLabelValues(prov, string(it.Kind), string(outcome)).Observe(took.Seconds())
	if it.Kind == state.Terminate && outcome == state.Done && it.Reason != reconcile.ReasonExcess && it.Reason != reconcile.ReasonDrain {
		t.a.m.replacements.WithLabelValues(it.Fleet, it.Reason).Inc()
	}
}

// view is a consistent copy of what a pass needs from the state.
type view struct {
	generation uint64
	fleets     map[string]*state.DesiredFleet
	records    map[string]state.Instance
	intents    []*state.Intent
	stats      map[string]state.FleetStats
}

func (a *Agent) readView() view {
	var v view
	a.node.Read(func(st *state.State) {
		v.generation = st.Generation
		v.fleets = make(map[string]*state.DesiredFleet, len(st.Fleets))
		for n, f := range st.Fleets {
			v.fleets[n] = f // desired fleets are replaced, never mutated, by the state
		}
		v.records = make(map[string]state.Instance, len(st.Instances))
		for id, in := range st.Instances {
			v.records[id] = *in
		}
		for _, it := range st.SortedIntents() {
			cp := *it
			v.intents = append(v.intents, &cp)
		}
		v.stats = make(map[string]state.FleetStats, len(st.Stats))
		for n, s := range st.Stats {
			v.stats[n] = *s
		}
	})
	return v
}

// pass is one level-based reconcile pass: observe everything, plan, act.
func (t *term) pass(ctx context.Context) error {
	a := t.a
	start := time.Now()
	v := a.readView()

	// Observe every provider that a fleet uses.
	providersUsed := map[string]bool{}
	for _, f := range v.fleets {
		providersUsed[f.Spec.Provider] = true
	}
	t.watchEvents(ctx, providersUsed)
	observed := map[string]instance.Observed{}
	listErr := map[string]string{}
	for name := range providersUsed {
		p := a.providers[name]
		if p == nil {
			listErr[name] = fmt.Sprintf("provider %q is not configured on agent %s", name, a.cfg.NodeName)
			continue
		}
		if name == "local" {
			if err := a.localShared(); err != nil {
				listErr[name] = err.Error()
				continue
			}
		}
		if wait := t.listWaiting(name); wait != "" {
			listErr[name] = wait
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		list, err := p.List(lctx)
		cancel()
		if ctx.Err() != nil {
			// Leadership lost (or the agent stops) while listing: that is
			// not the provider's fault, and not news to log as an outage.
			return ctx.Err()
		}
		if err != nil {
			listErr[name] = err.Error()
			t.backOffList(name, err)
			continue
		}
		t.listOK(name)
		for _, o := range list {
			observed[o.ID] = o
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	t.setObserved(observed)

	// Finish intents that no one is driving (left by an earlier leader or
	// by a crash), before planning on top of them.
	var orphaned []*state.Intent
	for _, it := range v.intents {
		f := v.fleets[it.Fleet]
		if f != nil && listErr[f.Spec.Provider] != "" {
			continue // cannot tell whether it happened: wait for the provider
		}
		if !t.exec.Driving(it.OpID) {
			orphaned = append(orphaned, it)
		}
	}
	if len(orphaned) > 0 {
		n, err := t.exec.Resume(ctx, orphaned, v.fleets, observed)
		if err != nil {
			return err
		}
		if n > 0 {
			// Plan in a fresh pass: the state must be read before the
			// provider is observed, never after (an intent that finished in
			// between would make its instance look unexplained).
			a.Wake()
			return nil
		}
	}

	in := t.buildInput(v, observed, listErr)
	plan := reconcile.Plan(in)
	a.m.reconcileDur.Observe(time.Since(start).Seconds())

	started, err := t.exec.Apply(ctx, v.generation, plan, v.fleets, observed)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t.log.Warn("plan not applied; replanning", zap.Error(err))
		a.Wake()
	}
	t.markHealthy(ctx, v)
	t.recordBlocks(ctx, plan)
	t.publish(v, in, plan, started)
	return nil
}

// buildInput joins records, intents, observations, verdicts and drift
// findings per fleet.
func (t *term) buildInput(v view, observed map[string]instance.Observed, listErr map[string]string) reconcile.Input {
	a := t.a
	voters := a.node.VoterIDs()
	a.votes.forget(voters)
	verdicts := a.votes.aggregate(a.cfg.NodeName, a.node.ID(), a.prober.Verdicts(), voters, a.quorum, time.Now())
	t.judged = verdicts
	openBy := map[string]*state.Intent{}
	for _, it := range v.intents {
		openBy[it.InstanceID] = it
	}
	ids := map[string]map[string]bool{}
	add := func(fleet, id string) {
		if ids[fleet] == nil {
			ids[fleet] = map[string]bool{}
		}
		ids[fleet][id] = true
	}
	for id, r := range v.records {
		add(r.Fleet, id)
	}
	for id, it := range openBy {
		add(it.Fleet, id)
	}
	for id, o := range observed {
		if v.fleets[o.Fleet] != nil {
			add(o.Fleet, id)
		}
	}
	names := make([]string, 0, len(v.fleets))
	for n := range v.fleets {
		names = append(names, n)
	}
	sort.Strings(names)
	a.mu.Lock()
	lim := a.limits
	a.mu.Unlock()
	t.driftMu.Lock()
	defer t.driftMu.Unlock()
	in := reconcile.Input{Now: time.Now(), Limits: reconcile.Limits{MaxInstances: lim.MaxInstances, MaxLaunchesInFlight: lim.MaxLaunchesInFlight}}
	for _, name := range names {
		f := v.fleets[name]
		fi := reconcile.FleetInput{Desired: f, Stats: v.stats[name], ObserveError: listErr[f.Spec.Provider]}
		list := make([]string, 0, len(ids[name]))
		for id := range ids[name] {
			list = append(list, id)
		}
		sort.Strings(list)
		for _, id := range list {
			x := reconcile.Inst{ID: id, Open: openBy[id]}
			if r, ok := v.records[id]; ok {
				x.Record = &r
			}
			if o, ok := observed[id]; ok {
				x.Observed = &o
			}
			if vd, ok := verdicts[id]; ok {
				x.Health = vd.Health
				x.Evidence = vd.Evidence
			}
			if d, ok := t.drift[id]; ok && d.finding != nil {
				x.Drift = d.finding
			}
			fi.Instances = append(fi.Instances, x)
		}
		in.Fleets = append(in.Fleets, fi)
	}
	return in
}

// inspectDrift inspects running instances for in-place changes, each at
// its fleet's drift interval, and wakes the loop when a finding changes.
func (t *term) inspectDrift(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		v := t.a.readView()
		leaving := map[string]bool{}
		for _, it := range v.intents {
			leaving[it.InstanceID] = true
		}
		t.driftMu.Lock()
		list := make([]instance.Observed, 0, len(t.observed))
		for _, o := range t.observed {
			list = append(list, o)
		}
		t.driftMu.Unlock()
		sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
		for _, o := range list {
			f := v.fleets[o.Fleet]
			// An instance with an intent open is being launched or removed
			// by immutd itself: its files are in flux, so a look now would
			// only report immutd's own work as drift.
			if f == nil || o.Phase != instance.Running || leaving[o.ID] {
				continue
			}
			insp, ok := t.a.providers[f.Spec.Provider].(reconcile.DriftInspector)
			if !ok {
				continue
			}
			t.driftMu.Lock()
			prev, seen := t.drift[o.ID]
			t.driftMu.Unlock()
			if seen && time.Since(prev.at) < f.Spec.Drift.Interval {
				continue
			}
			ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
			finding, err := insp.Inspect(ictx, o, f.Spec.Drift.IgnorePaths)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, instance.ErrGone) || t.a.hasOpenIntent(o.ID) {
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
				t.drift[o.ID] = driftEntry{at: time.Now(), finding: finding, err: err}
			}
			t.driftMu.Unlock()
			if stillThere && (finding != nil) != (seen && prev.finding != nil) {
				if finding != nil {
					t.log.Warn("instance drifted", zap.String("fleet", o.Fleet), zap.String("instance_id", o.ID),
						zap.String("reason", "drift_"+finding.Kind), zap.Strings("evidence", finding.Evidence))
				}
				t.a.Wake()
			}
		}
	}
}

// hasOpenIntent says whether an intent on the instance is open now.
func (a *Agent) hasOpenIntent(id string) bool {
	open := false
	a.node.Read(func(st *state.State) { open = st.OpenIntentFor(id) != nil })
	return open
}

// setObserved publishes the latest provider listing to the drift
// inspector and forgets findings of instances that are gone.
func (t *term) setObserved(observed map[string]instance.Observed) {
	t.driftMu.Lock()
	defer t.driftMu.Unlock()
	t.observed = observed
	for id := range t.drift {
		if _, ok := observed[id]; !ok {
			delete(t.drift, id)
		}
	}
}

// markHealthy records instances that probes judged healthy for the first
// time (this resets the fleet's launch backoff).
func (t *term) markHealthy(ctx context.Context, v view) {
	var ids []string
	for id, r := range v.records {
		if !r.EverHealthy && t.judged[id].Health == reconcile.Healthy {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return
	}
	sort.Strings(ids)
	if _, err := t.a.node.Apply(ctx, &state.MarkHealthy{InstanceIDs: ids, At: time.Now()}); err != nil && ctx.Err() == nil {
		t.log.Warn("could not record healthy instances", zap.Error(err))
	}
}

// recordBlocks logs and journals every change of a fleet's blocked causes,
// so "why is nothing happening" has an answer in the event log.
func (t *term) recordBlocks(ctx context.Context, plan reconcile.Result) {
	var events []state.Event
	now := time.Now()
	for _, st := range plan.Fleets {
		var causes []string
		var details []string
		for _, b := range st.Blocked {
			if b.Cause == reconcile.CauseLaunchLimit {
				continue // a throttle that comes and goes every few passes: status only
			}
			causes = append(causes, b.Cause)
			details = append(details, b.Cause+": "+b.Detail)
		}
		key := strings.Join(causes, ",")
		prev, seen := t.blocked[st.Fleet]
		if seen && prev == key || !seen && key == "" {
			continue
		}
		t.blocked[st.Fleet] = key
		if key == "" {
			events = append(events, state.Event{Time: now, Fleet: st.Fleet, Action: "remediation_unblocked", Reason: prev, Node: t.a.cfg.NodeName})
			t.log.Info("remediation unblocked", zap.String("fleet", st.Fleet), zap.String("reason", prev))
			continue
		}
		events = append(events, state.Event{Time: now, Fleet: st.Fleet, Action: "remediation_blocked", Reason: key, Evidence: details, Node: t.a.cfg.NodeName})
		t.log.Warn("remediation blocked", zap.String("fleet", st.Fleet), zap.String("reason", key), zap.Strings("evidence", details))
	}
	if len(events) > 0 {
		if _, err := t.a.node.Apply(ctx, &state.RecordEvents{Events: events}); err != nil && ctx.Err() == nil {
			t.log.Warn("could not record events", zap.Error(err))
		}
	}
}
