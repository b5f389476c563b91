package reconcile

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/state"
)

// guarded gives a fleet the guards' settings: rate 2/10m, secondary
// 1/10m above 25% failing, storm cooldown 1m.
func guarded(d *state.DesiredFleet) {
	share := quantity.Percent(25)
	d.Spec.Remediation.Rate = quantity.Rate{N: 2, Per: 10 * time.Minute}
	d.Spec.Remediation.SecondaryRate = quantity.Rate{N: 1, Per: 10 * time.Minute}
	d.Spec.Remediation.UnhealthyThreshold = &share
	cool := time.Minute
	d.Spec.Remediation.StormCooldown = &cool
	d.Spec.Remediation.MaxParallel = 5
	d.Spec.Remediation.MaxUnhealthy = quantity.Percent(100)
}

func ago(d time.Duration) time.Time { return t0.Add(-d) }

func quarantined(max int) func(*state.DesiredFleet) {
	return func(d *state.DesiredFleet) {
		d.Spec.Remediation.Quarantine = &state.QuarantineSpec{Max: max, TTL: 24 * time.Hour, Reasons: state.RemediationReasons}
	}
}

func inQuarantine(at time.Time) func(*Inst) {
	return func(i *Inst) {
		i.Record.Quarantined, i.Record.QuarantinedAt, i.Record.QuarantineReason = true, at, "unhealthy"
	}
}

// failedAt gives an instance failures (turns from healthy to unhealthy).
func failedAt(ts ...time.Time) func(*Inst) { return func(i *Inst) { i.Failures = ts } }

func withCheck(interval time.Duration, unhealthy int) func(*state.DesiredFleet) {
	return func(d *state.DesiredFleet) {
		d.Spec.Health.Checks = []state.Check{{Name: "ready", Kind: "http", Interval: interval, UnhealthyThreshold: unhealthy}}
	}
}

func heldBrief(hs []Held) []string {
	var out []string
	for _, h := range hs {
		out = append(out, heldOne(h))
	}
	slices.Sort(out)
	return out
}

func heldOne(h Held) string {
	if h.Kind == ActLaunch {
		return fmt.Sprintf("launch:%s=%s", h.Reason, h.Guard)
	}
	return fmt.Sprintf("%s:%s:%s=%s", h.Kind, h.InstanceID, h.Reason, h.Guard)
}

func TestGuardsTable(t *testing.T) {
	sick := health(Unhealthy)
	cases := []struct {
		name   string
		fleet  FleetInput
		in     func(*Input)
		want   []string
		held   []string
		causes []Cause
		detail string
	}{
		{name: "rate allows two kills, the third waits",
			fleet:  FleetInput{Desired: desired(3, guarded), Instances: []Inst{inst("a", mutated), inst("b", mutated), inst("c", mutated), inst("d"), inst("e"), inst("f")}},
			want:   []string{"terminate:a:drift_mutated", "terminate:b:drift_mutated"},
			held:   []string{"terminate:c:drift_mutated=rate_limited"},
			causes: []Cause{CauseRateLimited}, detail: "remediation.rate 2/10m is used up"},
		{name: "the window holds two kills already: nothing goes",
			fleet: FleetInput{Desired: desired(4, guarded), Stats: state.FleetStats{Kills: []time.Time{ago(time.Minute), ago(9 * time.Minute)}},
				Instances: []Inst{inst("a", mutated), inst("b"), inst("c"), inst("d"), inst("e")}},
			held:   []string{"terminate:a:drift_mutated=rate_limited"},
			causes: []Cause{CauseRateLimited}, detail: "next kill at " + stamp(ago(9*time.Minute).Add(10*time.Minute))},
		{name: "kills older than the window do not count",
			fleet: FleetInput{Desired: desired(4, guarded), Stats: state.FleetStats{Kills: []time.Time{ago(11 * time.Minute), ago(20 * time.Minute)}},
				Instances: []Inst{inst("a", mutated), inst("b"), inst("c"), inst("d"), inst("e")}},
			want: []string{"terminate:a:drift_mutated"}},
		{name: "above unhealthy_threshold the secondary rate applies",
			fleet: FleetInput{Desired: desired(4, guarded), Stats: state.FleetStats{Kills: []time.Time{ago(5 * time.Minute)}},
				Instances: []Inst{inst("a", health(NeverHealthy)), inst("b", health(NeverHealthy)), inst("c"), inst("d"), launching("n")}},
			want:   []string{},
			held:   []string{"terminate:a:never_healthy=rate_limited", "terminate:b:never_healthy=rate_limited"},
			causes: []Cause{CauseRateLimited}, detail: "secondary_rate"},
		{name: "every running instance fails: a storm, nothing is killed for its health",
			// No replacement either: it would break the storm's picture.
			fleet: FleetInput{Desired: desired(3, guarded), Instances: []Inst{inst("a", sick), inst("b", sick), inst("c", health(NeverHealthy))}},
			want:  []string{},
			held:  []string{"terminate:a:unhealthy=storm", "terminate:b:unhealthy=storm", "terminate:c:never_healthy=storm"}, causes: []Cause{CauseStorm}},
		{name: "two failing instances are no storm",
			fleet: FleetInput{Desired: desired(2, guarded), Instances: []Inst{inst("a", health(NeverHealthy)), inst("b", health(NeverHealthy))}},
			want:  []string{"launch:replacement", "terminate:a:never_healthy", "terminate:b:never_healthy"}},
		{name: "a storm that just ended: the cooldown holds kills for health",
			fleet: FleetInput{Desired: desired(3, guarded), Stats: state.FleetStats{Storm: state.Storm{Active: true, Since: ago(time.Hour)}},
				Instances: []Inst{inst("a", health(NeverHealthy)), inst("b"), inst("c")}},
			want:   []string{},
			held:   []string{"terminate:a:never_healthy=storm_cooldown"},
			causes: []Cause{CauseStormCooldown}, detail: "resume at " + stamp(t0.Add(time.Minute))},
		{name: "scaled to zero: no cooldown holds the last instance",
			fleet: FleetInput{Desired: desired(0, guarded), Stats: state.FleetStats{Storm: state.Storm{Active: true, Since: ago(time.Hour)}},
				Instances: []Inst{inst("a", health(NeverHealthy))}},
			want: []string{"terminate:a:never_healthy"}},
		{name: "the cooldown is over",
			fleet: FleetInput{Desired: desired(3, guarded), Stats: state.FleetStats{Storm: state.Storm{Since: ago(time.Hour), EndedAt: ago(61 * time.Second)}},
				Instances: []Inst{inst("a", health(NeverHealthy)), inst("b"), inst("c")}},
			want: []string{"launch:replacement", "terminate:a:never_healthy"}},
		{name: "the cluster's rate is shared",
			fleet: FleetInput{Desired: desired(3, guarded), Instances: []Inst{inst("a", mutated), inst("b", mutated), inst("c"), inst("d"), inst("e")}},
			in: func(in *Input) {
				in.Limits.RemediationRate = quantity.Rate{N: 3, Per: time.Hour}
				in.Kills = []time.Time{ago(time.Minute), ago(2 * time.Minute)}
			},
			want: []string{"terminate:a:drift_mutated"}, held: []string{"terminate:b:drift_mutated=rate_limited"},
			causes: []Cause{CauseRateLimited}, detail: "limits.remediation_rate 3/1h"},
		{name: "a failing instance whose kill the rate holds keeps its slot: no replacement",
			fleet: FleetInput{Desired: desired(3, guarded), Stats: state.FleetStats{Kills: []time.Time{ago(time.Minute), ago(2 * time.Minute)}},
				Instances: []Inst{inst("a", health(NeverHealthy)), inst("b"), inst("c")}},
			want: []string{}, held: []string{"terminate:a:never_healthy=rate_limited"}, causes: []Cause{CauseRateLimited}},
		{name: "three failures in the window: flapping, replaced while it passes",
			fleet: FleetInput{Desired: desired(3, guarded), Instances: []Inst{inst("a", failedAt(ago(9*time.Minute), ago(5*time.Minute), ago(time.Minute))), inst("b"), inst("c")}},
			want:  []string{"launch:replacement"}, held: []string{"terminate:a:unhealthy=replacement_first"}},
		{name: "two failures in the window, one older: not flapping",
			fleet: FleetInput{Desired: desired(3, guarded), Instances: []Inst{inst("a", failedAt(ago(11*time.Minute), ago(5*time.Minute), ago(time.Minute))), inst("b"), inst("c")}},
			want:  []string{}},
		{name: "recovered less than healthy_delay ago: starting, not replaced",
			fleet: FleetInput{Desired: desired(3, guarded, func(d *state.DesiredFleet) { d.Spec.Remediation.HealthyDelay = time.Minute }),
				Instances: []Inst{inst("a", failedAt(ago(2*time.Minute)), func(i *Inst) { i.HealthySince = ago(30 * time.Second) }), inst("b"), inst("c")}},
			want: []string{}},
		{name: "unhealthy for less than the settle window: the kill waits",
			fleet: FleetInput{Desired: desired(3, guarded, withCheck(time.Second, 3)),
				Instances: []Inst{inst("a", health(Unhealthy), func(i *Inst) { i.UnhealthySince = ago(2 * time.Second) }), inst("b"), inst("c"), inst("n", age(time.Minute))}},
			want: []string{}, held: []string{"terminate:a:unhealthy=settling"}},
		{name: "unhealthy for the settle window: killed",
			fleet: FleetInput{Desired: desired(3, guarded, withCheck(time.Second, 3)),
				Instances: []Inst{inst("a", health(Unhealthy), func(i *Inst) { i.UnhealthySince = ago(3 * time.Second) }), inst("b"), inst("c"), inst("n", age(time.Minute))}},
			want: []string{"terminate:a:unhealthy"}},
		{name: "quarantine: the unhealthy instance is kept for forensics, not killed",
			fleet: FleetInput{Desired: desired(3, guarded, quarantined(1)),
				Instances: []Inst{inst("a", health(NeverHealthy)), inst("b"), inst("c")}},
			want: []string{"launch:replacement", "quarantine:a:never_healthy"}},
		{name: "quarantine full: the next one is killed",
			fleet: FleetInput{Desired: desired(3, guarded, quarantined(1)),
				Instances: []Inst{inst("q", inQuarantine(ago(time.Hour))), inst("a", health(NeverHealthy)), inst("b"), inst("c")}},
			want: []string{"launch:replacement", "terminate:a:never_healthy"}},
		{name: "a quarantined instance does not count: its replacement is launched",
			fleet: FleetInput{Desired: desired(3, guarded, quarantined(1)),
				Instances: []Inst{inst("q", inQuarantine(ago(time.Hour)), health(Unhealthy)), inst("b"), inst("c")}},
			want: []string{"launch:replacement"}},
		{name: "a quarantined failing instance counts toward no breaker",
			fleet: FleetInput{Desired: desired(2, guarded, quarantined(1), func(d *state.DesiredFleet) { d.Spec.Remediation.MaxUnhealthy = quantity.Count(1) }),
				Instances: []Inst{inst("q", inQuarantine(ago(time.Hour)), health(Unhealthy)), inst("a", health(NeverHealthy)), inst("b")}},
			want: []string{"launch:replacement", "terminate:a:never_healthy"}},
		{name: "a quarantine past its ttl ends with a terminate",
			fleet: FleetInput{Desired: desired(3, guarded, quarantined(1)),
				Instances: []Inst{inst("q", inQuarantine(ago(25*time.Hour))), inst("b"), inst("c"), inst("d")}},
			want: []string{"terminate:q:quarantine_expired"}},
		{name: "an admitted instance is drained before it is quarantined",
			fleet: FleetInput{Desired: gatedFleet(3, guarded, quarantined(1)),
				Instances: []Inst{inst("a", health(NeverHealthy), admitted), inst("b", admitted), inst("c", admitted), inst("d", admitted)}},
			want: []string{"drain:a:never_healthy"}},
		{name: "a drained instance is quarantined",
			fleet: FleetInput{Desired: gatedFleet(3, guarded, quarantined(1)),
				Instances: []Inst{inst("a", health(NeverHealthy), drained), inst("b", admitted), inst("c", admitted), inst("d", admitted)}},
			want: []string{"quarantine:a:never_healthy"}},
		{name: "max_launch_failures reached: nothing more is launched",
			fleet: FleetInput{Desired: desired(3, guarded), Stats: state.FleetStats{LaunchFailures: 10, LastFailureAt: ago(time.Hour), LastFailureReason: "never_healthy"},
				Instances: []Inst{inst("a"), inst("b")}},
			want: []string{}, causes: []Cause{CauseLaunchCapped}, detail: "immutd fleet retry web"},
		{name: "below max_launch_failures the backoff alone applies",
			fleet: FleetInput{Desired: desired(3, guarded), Stats: state.FleetStats{LaunchFailures: 9, LastFailureAt: ago(time.Hour), LastFailureReason: "never_healthy"},
				Instances: []Inst{inst("a"), inst("b")}},
			want: []string{"launch:scale_up"}},
		{name: "a paused fleet holds every action",
			fleet: FleetInput{Desired: desired(3, guarded), Instances: []Inst{inst("a", sick), inst("b"), inst("c", exited)}},
			in: func(in *Input) {
				in.Pauses = []state.Pause{{ID: "p1", Reason: "db migration", By: "ana"}, {ID: "p2", Fleet: "web", Reason: "ticket 42", Until: t0.Add(time.Hour)}}
			},
			held:   []string{"launch:replacement=paused", "launch:replacement=paused", "terminate:a:unhealthy=replacement_first", "terminate:c:exited=paused"},
			causes: []Cause{CausePaused}, detail: "p1 (db migration, by ana, every fleet); p2 (ticket 42, until " + stamp(t0.Add(time.Hour)) + ")"},
		{name: "report lists drift_mutated: it is only reported, health still acts",
			fleet: FleetInput{Desired: desired(3, guarded, func(d *state.DesiredFleet) { d.Spec.Remediation.Report = []string{"drift_mutated"} }),
				Instances: []Inst{inst("a", mutated), inst("b", health(NeverHealthy)), inst("c")}},
			want:   []string{"launch:replacement", "terminate:b:never_healthy"},
			held:   []string{"terminate:a:drift_mutated=disabled"},
			causes: []Cause{CauseDisabled}, detail: "remediation.report lists drift_mutated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Now: t0, Fleets: []FleetInput{tc.fleet}}
			if tc.in != nil {
				tc.in(&in)
			}
			res := Plan(in)
			if got := brief(res.Actions); tc.want != nil && strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("actions: got %v, want %v", got, tc.want)
			}
			var held []Held
			for _, h := range res.Held {
				if h.Guard != GuardAvailability && h.Guard != GuardMaxParallel || slices.Contains(tc.held, heldOne(h)) {
					held = append(held, h)
				}
			}
			if got := heldBrief(held); strings.Join(got, " ") != strings.Join(tc.held, " ") {
				t.Errorf("held: got %v, want %v", got, tc.held)
			}
			st := res.Fleets[0]
			if got := causes(st); fmt.Sprint(got) != fmt.Sprint(tc.causes) {
				t.Errorf("blocked: got %v, want %v (%+v)", got, tc.causes, st.Blocked)
			}
			if tc.detail != "" && (len(st.Blocked) == 0 || !strings.Contains(st.Blocked[0].Detail, tc.detail)) {
				t.Errorf("block detail %+v does not say %q", st.Blocked, tc.detail)
			}
		})
	}
}

func TestGuardsClusterStorm(t *testing.T) {
	sick := health(Unhealthy)
	web := FleetInput{Desired: desired(2, guarded), Instances: []Inst{inst("a", sick), inst("b", sick)}}
	api := FleetInput{Desired: desired(1, guarded, func(d *state.DesiredFleet) { d.Spec.Name = "api" }), Instances: []Inst{inst("x", sick)}}
	api.Instances[0].Record.Fleet, api.Instances[0].Observed.Fleet = "api", "api"
	res := Plan(Input{Now: t0, Fleets: []FleetInput{web, api}})
	if !res.Storm {
		t.Fatal("every fleet failing at once is not a storm")
	}
	for _, a := range res.Actions {
		if a.Kind == ActTerminate {
			t.Fatalf("killed during a cluster storm: %v", brief(res.Actions))
		}
	}
	for _, st := range res.Fleets {
		if got := causes(st); !slices.Contains(got, CauseStorm) || !strings.Contains(st.Blocked[0].Detail, "every fleet") {
			t.Fatalf("fleet %s blocks %+v, want the cluster storm", st.Fleet, st.Blocked)
		}
	}
	// One healthy fleet is enough to tell the observer works.
	api.Instances[0].Health = Healthy
	res = Plan(Input{Now: t0, Fleets: []FleetInput{web, api}})
	if res.Storm {
		t.Fatal("a storm with a healthy fleet")
	}
}

func TestRateLeftAndNext(t *testing.T) {
	r := quantity.Rate{N: 2, Per: 10 * time.Minute}
	kills := []time.Time{ago(9 * time.Minute), ago(time.Minute), ago(11 * time.Minute)}
	if got := r.Left(kills, t0); got != 0 {
		t.Fatalf("left %d, want 0", got)
	}
	if got, want := r.NextAt(kills, t0), ago(9*time.Minute).Add(10*time.Minute); !got.Equal(want) {
		t.Fatalf("next %s, want %s", got, want)
	}
	if got := (quantity.Rate{}).Left(kills, t0); got != -1 {
		t.Fatalf("unset rate left %d, want -1", got)
	}
	if got := (quantity.Rate{N: 0, Per: time.Hour}).NextAt(nil, t0); !got.IsZero() {
		t.Fatalf("a zero rate allows a kill at %s", got)
	}
}
