package leader

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

var updateScenarios = flag.Bool("update", false, "rewrite testdata/scenarios/*.golden")

// world is a scenario's small world: the replicated state (the real
// one, every change through its commands), the instances that run, and
// their health. Launches and terminations happen at once; a launched
// instance is healthy from the next pass on, unless it runs a digest
// listed in broken.
type world struct {
	t      *testing.T
	st     *state.State
	now    time.Time
	run    map[string]instance.Observed
	health map[string]reconcile.Health
	since  map[string]time.Time
	broken map[string]bool
	seq    int
	trace  []string
}

func newWorld(t *testing.T, f *state.DesiredFleet) *world {
	w := &world{t: t, st: state.New(), now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
		run: map[string]instance.Observed{}, health: map[string]reconcile.Health{}, since: map[string]time.Time{}, broken: map[string]bool{}}
	w.desire(f)
	return w
}

func (w *world) apply(c state.Command) state.Result {
	w.t.Helper()
	b, err := state.Encode(c)
	if err != nil {
		w.t.Fatal(err)
	}
	d, err := state.Decode(b)
	if err != nil {
		w.t.Fatal(err)
	}
	return w.st.Apply(d)
}

func (w *world) desire(f *state.DesiredFleet) {
	w.apply(&state.SetDesired{BaseGeneration: w.st.Generation, Fleets: []*state.DesiredFleet{f}, At: w.now})
	w.logf("desired: image %s", f.ImageDigest)
}

func (w *world) logf(format string, args ...any) {
	w.trace = append(w.trace, fmt.Sprintf("%3ds ", int(w.now.Sub(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)).Seconds()))+fmt.Sprintf(format, args...))
}

// pass is one leader pass: plan on the world, act, record what the
// rollout did (with the leader's own rules, rolloutStepOf).
func (w *world) pass() {
	in := w.input()
	plan := reconcile.Plan(in)
	w.act(plan)
	for _, name := range w.st.FleetNames() {
		f := w.st.Fleets[name]
		if f.NeedsVersion() {
			w.apply(&state.RecordVersion{Fleet: name, ImageDigest: f.ImageDigest, TemplateHash: f.TemplateHash, At: w.now})
			w.logf("version %d recorded", w.st.Fleets[name].Versions[len(w.st.Fleets[name].Versions)-1].N)
			continue
		}
		for _, st := range plan.Fleets {
			if c := rolloutStepOf(f, st, w.now); st.Fleet == name && c != nil {
				c.Fleet, c.At = name, w.now
				if res := w.apply(c); res.Err == "" && c.Step != state.StepProgress {
					w.logf("rollout: %s %s", c.Step, c.Detail)
				}
			}
		}
	}
	for id, h := range w.health {
		if h == reconcile.Starting && !w.broken[w.run[id].ImageDigest] {
			w.health[id], w.since[id] = reconcile.Healthy, w.now
		} else if h == reconcile.Starting {
			w.health[id] = reconcile.Unhealthy
		}
	}
	w.now = w.now.Add(time.Second)
}

func (w *world) input() reconcile.Input {
	in := reconcile.Input{Now: w.now, Kills: w.st.Kills, Storm: w.st.Storm, Pauses: w.st.Pauses}
	for _, name := range w.st.FleetNames() {
		fi := reconcile.FleetInput{Desired: w.st.Fleets[name]}
		if s := w.st.Stats[name]; s != nil {
			fi.Stats = *s
		}
		ids := map[string]bool{}
		for id := range w.run {
			ids[id] = true
		}
		for id := range w.st.Instances {
			ids[id] = true
		}
		for _, id := range slices.Sorted(maps.Keys(ids)) {
			x := reconcile.Inst{ID: id, Open: w.st.OpenIntentFor(id), Health: w.health[id], HealthySince: w.since[id]}
			if r := w.st.Instances[id]; r != nil {
				rc := *r
				x.Record = &rc
			}
			if o, ok := w.run[id]; ok {
				x.Observed = &o
			}
			fi.Instances = append(fi.Instances, x)
		}
		in.Fleets = append(in.Fleets, fi)
	}
	return in
}

// act journals and completes every action of a plan at once.
func (w *world) act(plan reconcile.Result) {
	var lines []string
	for _, a := range plan.Actions {
		d := w.st.Fleets[a.Fleet]
		it := &state.Intent{OpID: fmt.Sprintf("op%d", w.seq), Fleet: a.Fleet, InstanceID: a.InstanceID, Reason: string(a.Reason)}
		w.seq++
		switch a.Kind {
		case reconcile.ActLaunch:
			t := d.Target()
			it.Kind, it.InstanceID, it.ImageDigest, it.TemplateHash = state.Launch, fmt.Sprintf("%s-%d", strings.TrimPrefix(t.ImageDigest, "sha256:"), w.seq), t.ImageDigest, t.TemplateHash
		case reconcile.ActTerminate:
			it.Kind = state.Terminate
		case reconcile.ActDrain:
			it.Kind = state.Drain
		case reconcile.ActAdmit:
			it.Kind = state.Admit
		default:
			continue
		}
		res := w.apply(&state.CommitIntents{Generation: w.st.Generation, Intents: []*state.Intent{it}, At: w.now})
		if len(res.Accepted) == 0 {
			w.t.Fatalf("intent %+v refused: %+v", it, res)
		}
		var obs *instance.Observed
		switch it.Kind {
		case state.Launch:
			o := instance.Observed{ID: it.InstanceID, Fleet: it.Fleet, ImageDigest: it.ImageDigest, TemplateHash: it.TemplateHash, Phase: instance.Running, StartedAt: w.now}
			w.run[o.ID], w.health[o.ID], obs = o, reconcile.Starting, &o
		case state.Terminate:
			delete(w.run, it.InstanceID)
			delete(w.health, it.InstanceID)
		}
		w.apply(&state.CompleteIntent{OpID: it.OpID, Outcome: state.Done, Observed: obs, At: w.now})
		lines = append(lines, fmt.Sprintf("%s %s (%s)", a.Kind, it.InstanceID, a.Reason))
	}
	if len(lines) > 0 {
		slices.Sort(lines)
		w.logf("%s", strings.Join(lines, ", "))
	}
}

func (w *world) counts() string {
	by := map[string]int{}
	for _, o := range w.run {
		by[strings.TrimPrefix(o.ImageDigest, "sha256:")]++
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(by)) {
		out = append(out, fmt.Sprintf("%s=%d", k, by[k]))
	}
	return strings.Join(out, " ")
}

func scenarioFleet(digest string, gated bool, rollout state.RolloutSpec) *state.DesiredFleet {
	f := &state.DesiredFleet{Spec: state.FleetSpec{Name: "web", Size: 3, Provider: "fake", Image: "/img/" + digest,
		Remediation: state.RemediationSpec{Enabled: true, MaxUnhealthy: quantity.Percent(50), MaxParallel: 1},
		Rollout:     rollout}, ImageDigest: "sha256:" + digest, TemplateHash: "t1"}
	if f.Spec.Rollout.MaxSurge == (quantity.Q{}) {
		f.Spec.Rollout.MaxSurge = quantity.Count(1)
	}
	if gated {
		f.Spec.Traffic = &state.TrafficSpec{Files: []state.TrafficFile{{Name: "t", Path: "/t.json"}}}
	}
	return f
}

// TestScenarios runs each strategy through the world, from v1 stable to
// v2 (or to a broken v2 and back), and compares the trace of every
// pass's actions and rollout steps with its golden file (go test -update
// rewrites them).
func TestScenarios(t *testing.T) {
	cases := []struct {
		name   string
		gated  bool
		spec   state.RolloutSpec
		broken bool
	}{
		{name: "rolling", spec: state.RolloutSpec{}},
		{name: "rolling_broken_reverts", spec: state.RolloutSpec{OnFailure: state.OnFailureRevert}, broken: true},
		{name: "canary", gated: true, spec: state.RolloutSpec{Canary: &state.CanarySpec{Count: quantity.Count(1), PromoteAfter: 2 * time.Second}}},
		{name: "canary_broken_reverts", gated: true, spec: state.RolloutSpec{OnFailure: state.OnFailureRevert, Canary: &state.CanarySpec{Count: quantity.Count(1), PromoteAfter: time.Hour}}, broken: true},
		{name: "blue_green", gated: true, spec: state.RolloutSpec{BlueGreen: true, Bake: 2 * time.Second}},
		{name: "checkpoints", spec: state.RolloutSpec{Checkpoints: []quantity.Q{quantity.Percent(50)}, CheckpointPause: 3 * time.Second}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, scenarioFleet("v1", tc.gated, tc.spec))
			for range 8 {
				w.pass()
			}
			w.logf("running: %s", w.counts())
			if tc.broken {
				w.broken["sha256:v2"] = true
			}
			w.desire(scenarioFleet("v2", tc.gated, tc.spec))
			for range 25 {
				w.pass()
			}
			w.logf("running: %s", w.counts())
			got := strings.Join(w.trace, "\n") + "\n"
			path := filepath.Join("testdata", "scenarios", tc.name+".golden")
			if *updateScenarios {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test -update writes it)", err)
			}
			if got != string(want) {
				t.Errorf("scenario %s differs from %s:\n--- got\n%s--- want\n%s", tc.name, path, got, want)
			}
		})
	}
}
