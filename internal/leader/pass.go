package leader

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// view is a consistent copy of what a pass needs from the state, read
// once at the start of the pass.
type view struct {
	generation uint64
	fleets     map[string]*state.DesiredFleet
	// records are the state's own records: replaced, never changed, by
	// the state, so shared here without a copy.
	records map[string]*state.Instance
	intents []*state.Intent
	stats   map[string]state.FleetStats
	// The guards' inputs: remediation kill times, the cluster-wide
	// storm, operators' pauses.
	kills  []time.Time
	storm  state.Storm
	pauses []state.Pause
}

func (t *Term) readView() view {
	var v view
	t.cfg.Journal.Read(func(st *state.State) {
		v.generation = st.Generation
		v.fleets = make(map[string]*state.DesiredFleet, len(st.Fleets))
		for n, f := range st.Fleets {
			v.fleets[n] = f // desired fleets are replaced, never mutated, by the state
		}
		v.records = maps.Clone(st.Instances)
		for _, it := range st.SortedIntents() {
			cp := *it
			v.intents = append(v.intents, &cp)
		}
		v.stats = make(map[string]state.FleetStats, len(st.Stats))
		for n, s := range st.Stats {
			cp := *s
			cp.Kills = slices.Clone(s.Kills)
			v.stats[n] = cp
		}
		v.kills, v.storm, v.pauses = slices.Clone(st.Kills), st.Storm, slices.Clone(st.Pauses)
	})
	return v
}

// pass is one level-based reconcile pass. The order matters: the state
// is read before the providers are observed, never after (an intent
// finishing in between would otherwise make its instance look
// unexplained), and intents no one drives are taken over before anything
// is planned on top of them.
func (t *Term) pass(ctx context.Context, now time.Time) (PassResult, error) {
	v := t.readView()
	observed, listErr, err := t.observe(ctx, v)
	if err != nil {
		return PassError, err
	}
	if n, err := t.resume(ctx, v, observed, listErr); err != nil {
		return PassError, err
	} else if n > 0 {
		t.cfg.Notify() // plan in a fresh pass, on state read after the takeover
		return PassResumed, nil
	}
	in := t.input(v, observed, listErr, now)
	plan := reconcile.Plan(in)
	started, err := t.exec.Apply(ctx, v.generation, plan, v.fleets, observed, v.records)
	if err != nil {
		if ctx.Err() != nil {
			return PassError, ctx.Err()
		}
		t.log.Warn("plan not applied; replanning", zap.Error(err))
		t.cfg.Notify()
	}
	t.markHealthy(ctx, v, now)
	t.syncTraffic(ctx, v, t.Judged())
	t.recordBlocks(ctx, plan, v.stats, now)
	t.recordStorms(ctx, v, plan, now)
	t.trackRollouts(ctx, v, plan, now)
	t.publish(v, in, plan, started, now)
	if err != nil {
		return PassError, nil
	}
	return PassOK, nil
}

// observe lists every provider a fleet uses. A provider that cannot be
// listed, or that is backing off after failures, blocks its fleets for
// this pass (listErr says why); nothing of them is launched or
// terminated then.
func (t *Term) observe(ctx context.Context, v view) (map[string]instance.Observed, map[string]string, error) {
	used := map[string]bool{}
	for _, f := range v.fleets {
		used[f.Spec.Provider] = true
	}
	t.watchEvents(ctx, used)
	listErr := map[string]string{}
	var lists [][]instance.Observed
	for _, name := range slices.Sorted(maps.Keys(used)) {
		p := t.cfg.Providers[name]
		if p == nil {
			listErr[name] = fmt.Sprintf("provider %q is not configured on agent %s", name, t.cfg.Node)
			continue
		}
		if pc, ok := p.(PlacementChecker); ok {
			if ids, err := t.cfg.Journal.ServerIDs(); err == nil {
				if err := pc.CheckServers(ids); err != nil {
					listErr[name] = err.Error()
					continue
				}
			}
		}
		if wait := t.listWaiting(name); wait != "" {
			listErr[name] = wait
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, listTimeout)
		list, err := p.List(lctx)
		cancel()
		if ctx.Err() != nil {
			// Leadership lost (or the agent stops) while listing: that is
			// not the provider's fault, and not news to log as an outage.
			return nil, nil, ctx.Err()
		}
		if err != nil {
			listErr[name] = err.Error()
			t.backOffList(name, err)
			continue
		}
		t.listOK(name)
		lists = append(lists, list)
	}
	n := 0
	for _, l := range lists {
		n += len(l)
	}
	observed := make(map[string]instance.Observed, n)
	for _, l := range lists {
		for _, o := range l {
			observed[o.ID] = o
		}
	}
	t.setObserved(observed)
	return observed, listErr, nil
}

// resume takes over the intents no one drives (left by an earlier leader
// or by a crash), except those of fleets whose provider could not be
// listed: whether they happened cannot be told yet.
func (t *Term) resume(ctx context.Context, v view, observed map[string]instance.Observed, listErr map[string]string) (int, error) {
	var orphaned []*state.Intent
	for _, it := range v.intents {
		f := v.fleets[it.Fleet]
		if f != nil && listErr[f.Spec.Provider] != "" {
			continue
		}
		if !t.exec.Driving(it.OpID) {
			orphaned = append(orphaned, it)
		}
	}
	if len(orphaned) == 0 {
		return 0, nil
	}
	return t.exec.Resume(ctx, orphaned, v.fleets, observed)
}

// input joins records, intents, observations, verdicts and drift
// findings per fleet.
func (t *Term) input(v view, observed map[string]instance.Observed, listErr map[string]string, now time.Time) reconcile.Input {
	judged := t.cfg.Judge.Judge(now)
	times := t.health.observe(judged, now)
	t.mu.Lock()
	t.judged = judged
	t.seen = &seen{observed: observed, listErr: listErr, judged: judged, times: times, at: now}
	t.mu.Unlock()
	return t.joined(v, t.seen, now)
}

// seen is what the last pass observed: the providers' lists, the
// verdicts, the admission clocks. A dry run plans on it.
type seen struct {
	observed map[string]instance.Observed
	listErr  map[string]string
	judged   map[string]Judgement
	times    map[string]healthTimes
	at       time.Time
}

// joined builds the planner's input from a view of the state and what
// was seen.
func (t *Term) joined(v view, sn *seen, now time.Time) reconcile.Input {
	observed, listErr, judged, times := sn.observed, sn.listErr, sn.judged, sn.times
	openBy := make(map[string]*state.Intent, len(v.intents))
	for _, it := range v.intents {
		openBy[it.InstanceID] = it
	}
	// The instances of each fleet: recorded, with an intent, or listed by
	// a provider; sorted, each once.
	ids := make(map[string][]string, len(v.fleets))
	for id, r := range v.records {
		ids[r.Fleet] = append(ids[r.Fleet], id)
	}
	for id, o := range observed {
		if r, recorded := v.records[id]; (!recorded || r.Fleet != o.Fleet) && v.fleets[o.Fleet] != nil {
			ids[o.Fleet] = append(ids[o.Fleet], id)
		}
	}
	for id, it := range openBy {
		ids[it.Fleet] = append(ids[it.Fleet], id) // a launch's instance may be listed already: Compact
	}
	for f, l := range ids {
		slices.Sort(l)
		ids[f] = slices.Compact(l)
	}
	settings := t.cfg.Settings()
	in := reconcile.Input{Now: now, Limits: settings.Limits, Kills: v.kills, Storm: v.storm, Pauses: v.pauses}
	t.driftMu.Lock()
	defer t.driftMu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(v.fleets)) {
		f := v.fleets[name]
		fi := reconcile.FleetInput{Desired: f, Stats: v.stats[name], ObserveError: listErr[f.Spec.Provider],
			Instances: make([]reconcile.Inst, 0, len(ids[name]))}
		obs := make([]instance.Observed, 0, len(ids[name]))
		for _, id := range ids[name] {
			x := reconcile.Inst{ID: id, Open: openBy[id], Record: v.records[id]}
			if o, ok := observed[id]; ok {
				obs = append(obs, o)
				x.Observed = &obs[len(obs)-1]
			}
			if j, ok := judged[id]; ok {
				x.Health, x.Evidence = j.Health, j.Evidence
			}
			ht := times[id]
			x.HealthySince, x.UnhealthySince, x.Failures = ht.healthySince, ht.unhealthySince, ht.failures
			if d, ok := t.drift[id]; ok && d.finding != nil {
				x.Drift = d.finding
			}
			fi.Instances = append(fi.Instances, x)
		}
		in.Fleets = append(in.Fleets, fi)
	}
	return in
}

// recordStorms journals storms that began or ended in this pass, so that
// their cooldowns survive a change of leader.
func (t *Term) recordStorms(ctx context.Context, v view, plan reconcile.Result, now time.Time) {
	cmd := &state.RecordStorms{Fleets: map[string]bool{}, At: now, Node: t.cfg.Node}
	for _, st := range plan.Fleets {
		if st.Guarded && st.Storm != v.stats[st.Fleet].Storm.Active {
			cmd.Fleets[st.Fleet] = st.Storm
		}
	}
	if plan.Storm != v.storm.Active {
		storm := plan.Storm
		cmd.Cluster = &storm
	}
	if len(cmd.Fleets) == 0 && cmd.Cluster == nil {
		return
	}
	for name, on := range cmd.Fleets {
		t.log.Warn("storm", zap.String("fleet", name), zap.Bool("active", on))
	}
	if cmd.Cluster != nil {
		t.log.Warn("cluster storm", zap.Bool("active", *cmd.Cluster))
	}
	if _, err := t.cfg.Journal.Apply(ctx, cmd); err != nil && ctx.Err() == nil {
		t.log.Warn("could not record storms", zap.Error(err))
	}
}

// Planned is a plan and when it was made.
type Planned struct {
	At     time.Time
	Result reconcile.Result
	// Observed is when the providers were listed for it.
	Observed time.Time
}

// DryRun plans on the state as it is now and on what the last pass
// observed, without acting: what a pass would do now, and what holds
// the rest back. ok is false before the first pass.
func (t *Term) DryRun(now time.Time) (p Planned, ok bool) {
	t.mu.Lock()
	sn := t.seen
	t.mu.Unlock()
	if sn == nil {
		return Planned{}, false
	}
	in := t.joined(t.readView(), sn, now)
	return Planned{At: now, Result: reconcile.Plan(in), Observed: sn.at}, true
}

// markHealthy records instances judged healthy for the first time (this
// resets the fleet's launch backoff).
func (t *Term) markHealthy(ctx context.Context, v view, now time.Time) {
	judged := t.Judged()
	var ids []string
	for id, r := range v.records {
		if !r.EverHealthy && judged[id].Health == reconcile.Healthy {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return
	}
	sort.Strings(ids)
	if _, err := t.cfg.Journal.Apply(ctx, &state.MarkHealthy{InstanceIDs: ids, At: now}); err != nil && ctx.Err() == nil {
		t.log.Warn("could not record healthy instances", zap.Error(err))
	}
}

// recordBlocks logs and journals every change of a fleet's blocked
// causes, so "why is nothing happening" has an answer in the event log.
// The launch throttle comes and goes every few passes: status only. A
// launch backoff that runs out is not an unblock while the fleet is in its
// streak of failed launches (reconcile.InLaunchStreak): the retry is part
// of the same block, so a permanent launch failure is one blocked event,
// not a blocked and unblocked pair per retry; the unblock, which counts
// the retries, comes when the streak ends.
func (t *Term) recordBlocks(ctx context.Context, plan reconcile.Result, stats map[string]state.FleetStats, now time.Time) {
	var events []state.Event
	backoff := string(reconcile.CauseLaunchBackoff)
	for _, st := range plan.Fleets {
		var causes, details []string
		for _, b := range st.Blocked {
			if b.Cause == reconcile.CauseLaunchLimit {
				continue
			}
			causes = append(causes, string(b.Cause))
			details = append(details, string(b.Cause)+": "+b.Detail)
		}
		prevKey := t.blocked[st.Fleet]
		if slices.Contains(causes, backoff) {
			t.inBackoff[st.Fleet] = true
		}
		if f := stats[st.Fleet].LaunchFailures; reconcile.InLaunchStreak(st, f) && !slices.Contains(causes, backoff) {
			if t.inBackoff[st.Fleet] {
				t.retries[st.Fleet]++ // the backoff ran out: one more retry of the streak
				t.inBackoff[st.Fleet] = false
			}
			causes = append(causes, backoff)
			details = append(details, fmt.Sprintf("%s: %d consecutive instances failed before becoming healthy; retrying", backoff, f))
			if sameSet(causes, strings.Split(prevKey, ",")) {
				continue // still the same block
			}
		}
		key := strings.Join(causes, ",")
		prev, seen := t.blocked[st.Fleet]
		if seen && prev == key || !seen && key == "" {
			continue
		}
		t.blocked[st.Fleet] = key
		if key == "" {
			ev := state.Event{Time: now, Fleet: st.Fleet, Action: state.ActionRemediationUnblocked, Reason: prev, Node: t.cfg.Node}
			if n := t.retries[st.Fleet]; n > 0 {
				ev.Evidence = []string{fmt.Sprintf("after %d launch %s that failed too, folded into the one blocked event", n, plural(n, "retry", "retries"))}
			}
			delete(t.retries, st.Fleet)
			delete(t.inBackoff, st.Fleet)
			events = append(events, ev)
			t.log.Info("remediation unblocked", zap.String("fleet", st.Fleet), zap.String("reason", prev))
			continue
		}
		events = append(events, state.Event{Time: now, Fleet: st.Fleet, Action: state.ActionRemediationBlocked, Reason: key, Evidence: details, Node: t.cfg.Node})
		t.log.Warn("remediation blocked", zap.String("fleet", st.Fleet), zap.String("reason", key), zap.Strings("evidence", details))
	}
	t.record(ctx, events...)
}

// sameSet says whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
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
func (t *Term) listWaiting(name string) string {
	now := t.cfg.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if b := t.listBackoff[name]; b != nil && now.Before(b.until) {
		return fmt.Sprintf("%s (next attempt in %s)", b.err, b.until.Sub(now).Round(100*time.Millisecond))
	}
	return ""
}

func (t *Term) listOK(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.listBackoff[name] != nil {
		t.log.Info("provider reachable again", zap.String("provider", name))
		delete(t.listBackoff, name)
	}
}

func (t *Term) backOffList(name string, err error) {
	now := t.cfg.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.listBackoff[name]
	if b == nil {
		b = &listRetry{wait: listBackoffMin}
		t.log.Warn("provider unreachable; nothing of its fleets is launched or terminated until it answers",
			zap.String("provider", name), zap.String("reason", string(reconcile.CauseProviderUnreachable)), zap.Error(err))
	} else {
		b.wait = min(2*b.wait, listBackoffMax)
	}
	b.until, b.err = now.Add(b.wait), err.Error()
	t.listBackoff[name] = b
}

// providerEvent is a provider's event stream speaking: it is reachable,
// so a List backoff ends.
func (t *Term) providerEvent(name string) {
	t.mu.Lock()
	if b := t.listBackoff[name]; b != nil {
		b.until = time.Time{}
	}
	t.mu.Unlock()
	t.cfg.Notify()
}

// watchEvents starts the event stream of every used provider that has one.
func (t *Term) watchEvents(ctx context.Context, used map[string]bool) {
	for name := range used {
		if t.watching[name] {
			continue
		}
		src, ok := t.cfg.Providers[name].(EventSource)
		if !ok {
			continue
		}
		t.watching[name] = true
		t.goRun(func() { src.Watch(ctx, func() { t.providerEvent(name) }) })
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
