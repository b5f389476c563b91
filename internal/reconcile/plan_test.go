package reconcile

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/state"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

const (
	imgNew  = "sha256:new"
	imgOld  = "sha256:old"
	tmplCur = "tmpl-cur"
)

func desired(size int, mut ...func(*state.DesiredFleet)) *state.DesiredFleet {
	d := &state.DesiredFleet{
		Spec: state.FleetSpec{
			Name: "web", Size: size, Provider: "fake", Image: "/img",
			Drift:       state.DriftSpec{Interval: 10 * time.Second, Orphans: state.OrphanAdopt},
			Remediation: state.RemediationSpec{Enabled: true, MaxUnhealthy: quantity.Percent(50), MaxParallel: 1},
			Rollout:     state.RolloutSpec{MaxSurge: quantity.Count(1), MaxUnavailable: quantity.Count(0)},
		},
		ImageDigest: imgNew, TemplateHash: tmplCur, Generation: 1,
	}
	for _, m := range mut {
		m(d)
	}
	return d
}

// inst builds an instance: recorded and running current image, healthy.
func inst(id string, mut ...func(*Inst)) Inst {
	in := Inst{
		ID:       id,
		Record:   &state.Instance{ID: id, Fleet: "web", ImageDigest: imgNew, TemplateHash: tmplCur, CreatedAt: t0.Add(-time.Hour)},
		Observed: &instance.Observed{ID: id, Fleet: "web", ImageDigest: imgNew, TemplateHash: tmplCur, Phase: instance.Running, StartedAt: t0.Add(-time.Hour)},
		Health:   Healthy,
	}
	for _, m := range mut {
		m(&in)
	}
	return in
}

func health(h Health) func(*Inst) { return func(i *Inst) { i.Health = h } }
func oldImage(i *Inst)            { i.Observed.ImageDigest = imgOld; i.Record.ImageDigest = imgOld }
func exited(i *Inst)              { i.Observed.Phase = instance.Exited; i.Observed.ExitReason = "signal: killed" }
func gone(i *Inst)                { i.Observed = nil }
func orphan(i *Inst)              { i.Record = nil }
func age(d time.Duration) func(*Inst) {
	return func(i *Inst) { i.Record.CreatedAt = t0.Add(-d); i.Observed.StartedAt = t0.Add(-d) }
}
func mutated(i *Inst) {
	i.Drift = &instance.Finding{Kind: instance.DriftMutated, Evidence: []string{"modified config/app.conf"}}
}
func opening(kind state.IntentKind) func(*Inst) {
	return func(i *Inst) { i.Open = &state.Intent{OpID: "op-" + i.ID, Kind: kind, Fleet: "web", InstanceID: i.ID} }
}

func launching(id string) Inst {
	return Inst{ID: id, Open: &state.Intent{OpID: "op-" + id, Kind: state.Launch, Fleet: "web", InstanceID: id, ImageDigest: imgNew}}
}

// brief renders actions as "launch:reason" / "terminate:id:reason".
func brief(acts []Action) []string {
	var out []string
	for _, a := range acts {
		if a.Kind == ActLaunch {
			out = append(out, "launch:"+string(a.Reason))
		} else {
			out = append(out, fmt.Sprintf("%s:%s:%s", a.Kind, a.InstanceID, a.Reason))
		}
	}
	sort.Strings(out)
	return out
}

func causes(st FleetStatus) []Cause {
	var out []Cause
	for _, b := range st.Blocked {
		out = append(out, b.Cause)
	}
	return out
}

func TestPlanTable(t *testing.T) {
	tests := []struct {
		name    string
		desired *state.DesiredFleet
		stats   state.FleetStats
		obsErr  string
		insts   []Inst
		want    []string
		blocked []Cause
	}{
		{name: "empty fleet launches size", desired: desired(3),
			want: []string{"launch:scale_up", "launch:scale_up", "launch:scale_up"}},
		{name: "steady state does nothing", desired: desired(2),
			insts: []Inst{inst("a"), inst("b")}},
		{name: "below size launches the missing one", desired: desired(3),
			insts: []Inst{inst("a"), inst("b")}, want: []string{"launch:scale_up"}},
		{name: "launches in flight count toward size", desired: desired(3),
			insts: []Inst{inst("a"), inst("b"), launching("c")}},
		{name: "exited instance is cleaned up and replaced", desired: desired(3),
			insts: []Inst{inst("a"), inst("b"), inst("c", exited)},
			want:  []string{"launch:replacement", "terminate:c:exited"}},
		{name: "vanished instance is forgotten and replaced", desired: desired(2),
			insts: []Inst{inst("a"), inst("b", gone)},
			want:  []string{"launch:replacement", "terminate:b:gone"}},
		{name: "unhealthy: the replacement is launched first", desired: desired(3),
			insts: []Inst{inst("a"), inst("b"), inst("c", health(Unhealthy))},
			want:  []string{"launch:replacement"}},
		{name: "unhealthy: kept while its replacement launches", desired: desired(3),
			insts: []Inst{inst("a"), inst("b"), inst("c", health(Unhealthy)), launching("d")}},
		{name: "unhealthy: kept while its replacement starts", desired: desired(3),
			insts: []Inst{inst("a"), inst("b"), inst("c", health(Unhealthy)), inst("d", health(Starting))}},
		{name: "unhealthy: goes once its replacement is healthy", desired: desired(3),
			insts: []Inst{inst("a"), inst("b"), inst("c", health(Unhealthy)), inst("d")},
			want:  []string{"terminate:c:unhealthy"}},
		{name: "unhealthy: goes first when max_surge leaves no room", desired: desired(3, func(d *state.DesiredFleet) {
			d.Spec.Rollout.MaxSurge = quantity.Count(0)
			d.Spec.Rollout.MaxUnavailable = quantity.Count(1)
		}),
			insts: []Inst{inst("a"), inst("b"), inst("c", health(Unhealthy))},
			want:  []string{"terminate:c:unhealthy"}},
		{name: "unhealthy: goes first when the surge is used up", desired: desired(3),
			insts: []Inst{inst("a"), inst("b", health(Unhealthy)), inst("c", health(Unhealthy)), inst("d")},
			want:  []string{"terminate:b:unhealthy"}},
		{name: "unhealthy: goes at once when max_unavailable allows", desired: desired(3, func(d *state.DesiredFleet) { d.Spec.Rollout.MaxUnavailable = quantity.Count(1) }),
			insts: []Inst{inst("a"), inst("b"), inst("c", health(Unhealthy))},
			want:  []string{"launch:replacement", "terminate:c:unhealthy"}},
		{name: "never healthy is replaced", desired: desired(1),
			insts: []Inst{inst("a", health(NeverHealthy))},
			want:  []string{"launch:replacement", "terminate:a:never_healthy"}},
		{name: "too many unhealthy blocks every kill", desired: desired(3),
			insts:   []Inst{inst("a"), inst("b", health(Unhealthy)), inst("c", health(Unhealthy))},
			want:    []string{"launch:replacement"},
			blocked: []Cause{CauseTooManyUnhealthy}},
		{name: "max_unhealthy as a count", desired: desired(4, func(d *state.DesiredFleet) {
			d.Spec.Remediation.MaxUnhealthy = quantity.Count(2)
			d.Spec.Remediation.MaxParallel = 2
			// The breaker alone: a secondary kill rate that lets both go.
			d.Spec.Remediation.SecondaryRate = quantity.Rate{N: 10, Per: time.Minute}
		}),
			insts: []Inst{inst("a"), inst("b"), inst("c", health(Unhealthy)), inst("d", health(Unhealthy)), inst("e"), inst("f")},
			want:  []string{"terminate:c:unhealthy", "terminate:d:unhealthy"}},
		{name: "percent max_unhealthy lets a single instance heal", desired: desired(1),
			insts: []Inst{inst("a", health(Unhealthy))},
			want:  []string{"launch:replacement"}},
		{name: "percent max_unhealthy lets a single instance heal, once replaced", desired: desired(1),
			insts: []Inst{inst("a", health(Unhealthy)), inst("b")},
			want:  []string{"terminate:a:unhealthy"}},
		{name: "the breaker does not churn a fleet at its surge", desired: desired(3),
			insts:   []Inst{inst("a"), inst("b", health(Unhealthy)), inst("c", health(Unhealthy)), inst("d", health(Unhealthy))},
			blocked: []Cause{CauseTooManyUnhealthy}},
		{name: "scaled to 0, never-healthy instances go despite the breaker", desired: desired(0, func(d *state.DesiredFleet) { d.Spec.Remediation.MaxParallel = 2 }),
			insts: []Inst{inst("a", health(NeverHealthy)), inst("b", health(NeverHealthy)), inst("c", health(NeverHealthy)), inst("d", health(NeverHealthy))},
			want:  []string{"terminate:a:never_healthy", "terminate:b:never_healthy"}, blocked: []Cause{CauseTooManyUnhealthy}},
		{name: "scaled down, unhealthy instances beyond size and surge go despite the breaker", desired: desired(1),
			insts: []Inst{inst("a", health(Unhealthy)), inst("b", health(Unhealthy)), inst("c", health(Unhealthy))},
			want:  []string{"terminate:a:unhealthy"}, blocked: []Cause{CauseTooManyUnhealthy}},
		{name: "max_parallel bounds kills in flight", desired: desired(4, func(d *state.DesiredFleet) { d.Spec.Remediation.MaxUnhealthy = quantity.Count(4) }),
			insts: []Inst{inst("a"), inst("b", health(Unhealthy), opening(state.Terminate)), inst("c", health(Unhealthy)), inst("d")},
			want:  []string{"launch:replacement"}},
		{name: "provider list failure blocks everything", desired: desired(3), obsErr: "dial unix /run/docker.sock: connection refused",
			insts:   []Inst{inst("a", health(Unhealthy))},
			blocked: []Cause{CauseProviderUnreachable}},
		{name: "rollout starts surge-first", desired: desired(3),
			insts: []Inst{inst("a", oldImage), inst("b", oldImage), inst("c", oldImage)},
			want:  []string{"launch:rollout"}},
		{name: "rollout waits for the new instance to be healthy", desired: desired(3),
			insts: []Inst{inst("a", oldImage), inst("b", oldImage), inst("c", oldImage), inst("n1", health(Starting))}},
		{name: "rollout kills the oldest outdated once the new one is healthy", desired: desired(3),
			insts: []Inst{inst("a", oldImage, age(2*time.Hour)), inst("b", oldImage, age(3*time.Hour)), inst("c", oldImage), inst("n1")},
			want:  []string{"terminate:b:drift_image"}},
		{name: "rollout with max_unavailable 1 and no surge kills first", desired: desired(3, func(d *state.DesiredFleet) {
			d.Spec.Rollout.MaxSurge = quantity.Count(0)
			d.Spec.Rollout.MaxUnavailable = quantity.Count(1)
		}),
			insts: []Inst{inst("a", oldImage, age(3*time.Hour)), inst("b", oldImage), inst("c", oldImage)},
			want:  []string{"terminate:a:drift_image"}},
		{name: "a never-healthy new image keeps the old instances", desired: desired(3),
			stats: state.FleetStats{LaunchFailures: 1, LastFailureAt: t0},
			insts: []Inst{inst("a", oldImage), inst("b", oldImage), inst("c", oldImage), inst("n1", health(NeverHealthy))},
			want:  []string{"terminate:n1:never_healthy"}},
		{name: "launch backoff after repeated failures", desired: desired(3),
			stats:   state.FleetStats{LaunchFailures: 3, LastFailureAt: t0.Add(-time.Second), LastFailureReason: "never_healthy"},
			insts:   []Inst{inst("a"), inst("b")},
			blocked: []Cause{CauseLaunchBackoff}},
		{name: "backoff expired launches again", desired: desired(3),
			stats: state.FleetStats{LaunchFailures: 3, LastFailureAt: t0.Add(-time.Minute)},
			insts: []Inst{inst("a"), inst("b")},
			want:  []string{"launch:scale_up"}},
		{name: "mutated instance is replaced surge-first", desired: desired(2),
			insts: []Inst{inst("a"), inst("b", mutated)},
			want:  []string{"launch:replacement"}},
		{name: "mutated instance goes once its replacement is healthy", desired: desired(2),
			insts: []Inst{inst("a"), inst("b", mutated), inst("c")},
			want:  []string{"terminate:b:drift_mutated"}},
		{name: "template drift rolls", desired: desired(1),
			insts: []Inst{inst("a", func(i *Inst) { i.Observed.TemplateHash = "tmpl-old" }), inst("b")},
			want:  []string{"terminate:a:drift_template"}},
		{name: "excess: least healthy then oldest goes", desired: desired(2, func(d *state.DesiredFleet) { d.Spec.Remediation.MaxParallel = 2 }),
			insts: []Inst{inst("a", age(3*time.Hour)), inst("b", age(time.Hour)), inst("c", age(2*time.Hour)), inst("d", age(4*time.Hour))},
			want:  []string{"terminate:a:excess", "terminate:d:excess"}},
		{name: "instances without a verdict are not killed", desired: desired(1),
			insts: []Inst{inst("a", oldImage, health(Unknown)), inst("b", health(Unknown))}},
		{name: "orphan is adopted by default", desired: desired(1),
			insts: []Inst{inst("a", orphan)},
			want:  []string{"adopt:a:orphan"}},
		{name: "orphan terminated under terminate policy", desired: desired(1, func(d *state.DesiredFleet) { d.Spec.Drift.Orphans = state.OrphanTerminate }),
			insts: []Inst{inst("a"), inst("x", orphan)},
			want:  []string{"terminate:x:orphan"}},
		{name: "orphan ignored is left alone", desired: desired(1, func(d *state.DesiredFleet) { d.Spec.Drift.Orphans = state.OrphanIgnore }),
			insts: []Inst{inst("a"), inst("x", orphan)}},
		{name: "remediation disabled only reports", desired: desired(2, func(d *state.DesiredFleet) { d.Spec.Remediation.Enabled = false }),
			insts:   []Inst{inst("a"), inst("b", health(Unhealthy)), inst("c")},
			blocked: []Cause{CauseDisabled}},
		{name: "remediation disabled: an unhealthy instance is kept and counted", desired: desired(2, func(d *state.DesiredFleet) { d.Spec.Remediation.Enabled = false }),
			insts:   []Inst{inst("a"), inst("b", health(Unhealthy))},
			blocked: []Cause{CauseDisabled}},
		{name: "remediation disabled: a changed instance is kept and counted", desired: desired(3, func(d *state.DesiredFleet) { d.Spec.Remediation.Enabled = false }),
			insts:   []Inst{inst("a"), inst("b"), inst("c", mutated)},
			blocked: []Cause{CauseDisabled}},
		{name: "remediation disabled: never-healthy and orphans are kept", desired: desired(2, func(d *state.DesiredFleet) {
			d.Spec.Remediation.Enabled = false
			d.Spec.Drift.Orphans = state.OrphanTerminate
		}),
			insts:   []Inst{inst("a", health(NeverHealthy)), inst("b", orphan)},
			blocked: []Cause{CauseDisabled}},
		{name: "remediation disabled: a rollout still rolls", desired: desired(2, func(d *state.DesiredFleet) { d.Spec.Remediation.Enabled = false }),
			insts: []Inst{inst("a", oldImage, mutated), inst("b", oldImage), inst("n")},
			want:  []string{"terminate:a:drift_image"}, blocked: []Cause{CauseDisabled}},
		{name: "remediation disabled: exited instances are still replaced", desired: desired(2, func(d *state.DesiredFleet) { d.Spec.Remediation.Enabled = false }),
			insts: []Inst{inst("a"), inst("b", exited)},
			want:  []string{"launch:replacement", "terminate:b:exited"}},
		{name: "remediation disabled: size changes apply", desired: desired(1, func(d *state.DesiredFleet) { d.Spec.Remediation.Enabled = false }),
			insts: []Inst{inst("a", age(2*time.Hour)), inst("b")},
			want:  []string{"terminate:a:excess"}},
		{name: "unconfigured fleet is frozen", desired: desired(3, func(d *state.DesiredFleet) { d.Unconfigured = true }),
			insts:   []Inst{inst("a", health(Unhealthy))},
			blocked: []Cause{CauseUnconfigured}},
		{name: "draining terminates everything, one at a time", desired: desired(3, func(d *state.DesiredFleet) { d.Unconfigured, d.Draining = true, true }),
			insts: []Inst{inst("a", age(time.Hour)), inst("b", age(2*time.Hour))},
			want:  []string{"terminate:b:drain"}},
		{name: "unresolved image launches nothing", desired: desired(2, func(d *state.DesiredFleet) { d.ImageDigest = ""; d.ResolveError = "no such image" }),
			blocked: []Cause{CauseNoImage}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: tc.desired, Stats: tc.stats, ObserveError: tc.obsErr, Instances: tc.insts}}})
			got := brief(res.Actions)
			if len(got) == 0 && len(tc.want) == 0 {
				got, tc.want = nil, nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("actions:\n got %v\nwant %v", got, tc.want)
			}
			if gb := causes(res.Fleets[0]); !reflect.DeepEqual(gb, tc.blocked) {
				t.Errorf("blocked: got %v, want %v (%+v)", gb, tc.blocked, res.Fleets[0].Blocked)
			}
			for _, a := range res.Actions {
				if a.Reason == "" {
					t.Errorf("action without reason: %+v", a)
				}
				if a.Kind == ActTerminate && len(a.Evidence) == 0 {
					t.Errorf("termination without evidence: %+v", a)
				}
			}
		})
	}
}

func TestPlanStatusCounts(t *testing.T) {
	res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: desired(5), Instances: []Inst{
		inst("a"), inst("b", health(Unhealthy)), inst("c", exited), inst("d", oldImage), inst("e", mutated, health(Starting)),
		launching("f"), inst("g", opening(state.Terminate)), inst("h", orphan),
	}}}})
	st := res.Fleets[0]
	want := map[InstanceState]int{"healthy": 3, "starting": 1, "unhealthy": 1, "never_healthy": 0, "exited": 1, "launching": 1, "terminating": 1, "draining": 0, "quarantined": 0}
	if !reflect.DeepEqual(st.States, want) {
		t.Errorf("states: got %v want %v", st.States, want)
	}
	wantDrift := map[string]int{"image": 1, "template": 0, "mutated": 1, "orphan": 1}
	if !reflect.DeepEqual(st.Drifted, wantDrift) {
		t.Errorf("drifted: got %v want %v", st.Drifted, wantDrift)
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{0: 0, 1: 0, 2: time.Second, 3: 2 * time.Second, 4: 4 * time.Second, 12: BackoffMax, 1000: BackoffMax} {
		if got := Backoff(n); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestPlanEvidenceNamesDriftPath(t *testing.T) {
	res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: desired(1), Instances: []Inst{inst("a", mutated), inst("b")}}}})
	if len(res.Actions) != 1 || !strings.Contains(strings.Join(res.Actions[0].Evidence, " "), "config/app.conf") {
		t.Fatalf("want one drift termination naming the changed path, got %+v", res.Actions)
	}
}

// TestPlanGlobalLimits: max_instances and max_launches_in_flight hold
// over all fleets together, the launches they allow are shared out in
// turn, and a fleet that gets fewer than it needs says why.
func TestPlanGlobalLimits(t *testing.T) {
	named := func(name string, size int) *state.DesiredFleet {
		return desired(size, func(d *state.DesiredFleet) {
			d.Spec.Name = name
			d.Spec.Rollout.MaxSurge = quantity.Count(size)
		})
	}
	fleets := func() []FleetInput {
		return []FleetInput{
			{Desired: named("a", 10)},
			{Desired: named("b", 10), Instances: []Inst{inst("b1"), inst("b2")}},
			{Desired: named("c", 1)},
		}
	}
	count := func(res Result) map[string]int {
		n := map[string]int{}
		for _, a := range res.Actions {
			if a.Kind == ActLaunch {
				n[a.Fleet]++
			}
		}
		return n
	}
	res := Plan(Input{Now: t0, Limits: Limits{MaxInstances: 7}, Fleets: fleets()})
	if got := count(res); !reflect.DeepEqual(got, map[string]int{"a": 2, "b": 2, "c": 1}) {
		t.Errorf("max_instances 7 with 2 live: launches %v, want a:2 b:2 c:1 (shared in turn)", got)
	}
	if gb := causes(res.Fleets[0]); !reflect.DeepEqual(gb, []Cause{CauseInstanceLimit}) || !strings.Contains(res.Fleets[0].Blocked[0].Detail, "8 of the 10 launches") {
		t.Errorf("fleet a: %+v", res.Fleets[0].Blocked)
	}
	if gb := causes(res.Fleets[2]); gb != nil {
		t.Errorf("fleet c got all it needs, yet blocked %v", gb)
	}
	res = Plan(Input{Now: t0, Limits: Limits{MaxLaunchesInFlight: 4}, Fleets: append(fleets(), FleetInput{Desired: named("d", 2), Instances: []Inst{launching("d1")}})})
	if got := count(res); !reflect.DeepEqual(got, map[string]int{"a": 1, "b": 1, "c": 1}) {
		t.Errorf("max_launches_in_flight 4 with 1 in flight: launches %v", got)
	}
	if gb := causes(res.Fleets[3]); !reflect.DeepEqual(gb, []Cause{CauseLaunchLimit}) {
		t.Errorf("fleet d: %+v", res.Fleets[3].Blocked)
	}
	// Full: nothing launches, and an unhealthy instance goes first to make
	// room for its replacement.
	full := []FleetInput{{Desired: named("a", 3), Instances: []Inst{inst("a1"), inst("a2"), inst("a3", health(Unhealthy))}}}
	res = Plan(Input{Now: t0, Limits: Limits{MaxInstances: 3}, Fleets: full})
	if got := brief(res.Actions); !reflect.DeepEqual(got, []string{"terminate:a3:unhealthy"}) {
		t.Errorf("at max_instances: %v", got)
	}
}

func TestPlanClassifiesEveryInstance(t *testing.T) {
	ignore := func(d *state.DesiredFleet) { d.Spec.Drift.Orphans = state.OrphanIgnore }
	res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: desired(5, ignore), Instances: []Inst{
		inst("a"), inst("b", health(NeverHealthy)), inst("c", exited), inst("d", gone), inst("e", health(Unknown)),
		launching("f"), inst("g", opening(state.Terminate)), inst("h", orphan), inst("i", orphan, opening(state.Terminate)),
	}}}})
	st := res.Fleets[0]
	want := map[string]InstanceStatus{"a": {State: StateHealthy}, "b": {State: StateNeverHealthy}, "c": {State: StateExited},
		"d": {State: StateGone}, "e": {State: StateStarting}, "f": {State: StateLaunching}, "g": {State: StateTerminating},
		"h": {State: StateHealthy, Ignored: true}, "i": {State: StateTerminating}}
	if !reflect.DeepEqual(st.Instances, want) {
		t.Errorf("instances: got %v want %v", st.Instances, want)
	}
	// Gone counts as exited; the ignored orphan is not counted, the one
	// being terminated is.
	wantStates := map[InstanceState]int{"healthy": 1, "starting": 1, "unhealthy": 0, "never_healthy": 1, "exited": 2, "launching": 1, "terminating": 2, "draining": 0, "quarantined": 0}
	if !reflect.DeepEqual(st.States, wantStates) {
		t.Errorf("states: got %v want %v", st.States, wantStates)
	}
}

func TestStartedCountsIntentsOfThePass(t *testing.T) {
	ignore := func(d *state.DesiredFleet) { d.Spec.Drift.Orphans = state.OrphanIgnore }
	res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: desired(3, ignore), Instances: []Inst{
		inst("a"), inst("b", health(Unhealthy)), inst("c", opening(state.Terminate)), inst("h", orphan),
	}}}})
	st := res.Fleets[0]
	for _, it := range []*state.Intent{
		{Kind: state.Terminate, InstanceID: "b"},
		{Kind: state.Terminate, InstanceID: "c"},       // terminating already
		{Kind: state.Terminate, InstanceID: "unknown"}, // not an instance of the plan
		{Kind: state.Terminate, InstanceID: "h"},
		{Kind: state.Launch, InstanceID: "n"},
	} {
		st.Started(it)
	}
	want := map[string]InstanceStatus{"a": {State: StateHealthy}, "b": {State: StateTerminating}, "c": {State: StateTerminating},
		"h": {State: StateTerminating}, "n": {State: StateLaunching}}
	if !reflect.DeepEqual(st.Instances, want) {
		t.Errorf("instances: got %v want %v", st.Instances, want)
	}
	wantStates := map[InstanceState]int{"healthy": 1, "starting": 0, "unhealthy": 0, "never_healthy": 0, "exited": 0, "launching": 1, "terminating": 3, "draining": 0, "quarantined": 0}
	if !reflect.DeepEqual(st.States, wantStates) {
		t.Errorf("states: got %v want %v", st.States, wantStates)
	}
}

func gatedFleet(size int, mut ...func(*state.DesiredFleet)) *state.DesiredFleet {
	return desired(size, append([]func(*state.DesiredFleet){func(d *state.DesiredFleet) {
		d.Spec.Traffic = &state.TrafficSpec{MinReady: 10 * time.Second, KeepMin: 1, Files: []state.TrafficFile{{Name: "t", Path: "/t.json"}}}
	}}, mut...)...)
}

func admitted(i *Inst) { i.Record.Admitted = true }
func drained(i *Inst)  { i.Record.Drained = true }
func healthyFor(d time.Duration) func(*Inst) {
	return func(i *Inst) { i.HealthySince = t0.Add(-d) }
}

func TestPlanTrafficGate(t *testing.T) {
	tests := []struct {
		name    string
		fleet   *state.DesiredFleet
		insts   []Inst
		want    []string
		blocked []Cause
	}{
		{"admits after min_ready, not before", gatedFleet(3),
			[]Inst{inst("a", admitted), inst("b", healthyFor(10*time.Second)), inst("c", healthyFor(9*time.Second))},
			[]string{"admit:b:ready"}, nil},
		{"an unknown healthy-since is never admitted", gatedFleet(1), []Inst{inst("a")}, nil, nil},
		{"rollout: an admitted old instance is drained, not terminated", gatedFleet(2),
			[]Inst{inst("a", admitted, oldImage), inst("b", admitted), inst("n", admitted)},
			[]string{"drain:a:drift_image"}, nil},
		{"rollout: the replacement is admitted before an old one is drained", gatedFleet(2),
			[]Inst{inst("a", admitted, oldImage), inst("b", admitted), inst("n", healthyFor(time.Second))},
			nil, nil},
		{"a drained instance is terminated without the availability budget", gatedFleet(2),
			[]Inst{inst("a", drained, oldImage), inst("b", admitted), inst("n", healthyFor(time.Second))},
			[]string{"terminate:a:drift_image"}, nil},
		{"an exited admitted instance is drained before it is forgotten", gatedFleet(3),
			[]Inst{inst("a", admitted, exited), inst("b", admitted), inst("c", admitted)},
			[]string{"drain:a:exited", "launch:replacement"}, nil},
		{"keep_min: of two unhealthy members one keeps its traffic", gatedFleet(2, func(d *state.DesiredFleet) {
			d.Spec.Rollout.MaxUnavailable = quantity.Count(2)
			d.Spec.Remediation.MaxUnhealthy = quantity.Percent(100)
			d.Spec.Remediation.MaxParallel = 2
		}),
			[]Inst{inst("a", admitted, health(Unhealthy)), inst("b", admitted, health(Unhealthy))},
			[]string{"drain:b:unhealthy", "launch:replacement"}, []Cause{CauseKeepMin}},
		{"keep_min is capped so that a replacement can be made room for", gatedFleet(1, func(d *state.DesiredFleet) {
			d.Spec.Rollout.MaxSurge = quantity.Count(0)
			d.Spec.Rollout.MaxUnavailable = quantity.Count(1)
		}),
			[]Inst{inst("a", admitted, health(Unhealthy))},
			[]string{"drain:a:unhealthy"}, nil},
		{"keep_min: an unhealthy member is drained once another member stays", gatedFleet(2),
			[]Inst{inst("a", admitted, health(Unhealthy)), inst("b", admitted), inst("n", admitted)},
			[]string{"drain:a:unhealthy"}, nil},
		{"a healthy instance never admitted costs no availability", gatedFleet(1),
			[]Inst{inst("a", admitted), inst("b", oldImage)},
			[]string{"terminate:b:drift_image"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: tc.fleet, Instances: tc.insts}}})
			if got := brief(res.Actions); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("actions: got %v want %v", got, tc.want)
			}
			var causes []Cause
			for _, b := range res.Fleets[0].Blocked {
				causes = append(causes, b.Cause)
			}
			if !reflect.DeepEqual(causes, tc.blocked) {
				t.Errorf("blocked: got %v want %v", res.Fleets[0].Blocked, tc.blocked)
			}
		})
	}
}
