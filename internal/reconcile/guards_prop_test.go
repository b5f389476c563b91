package reconcile

import (
	"fmt"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/state"
)

// genRate draws a rate of 0 to 4 kills per 10 minutes, or none.
func genRate(t *rapid.T, label string) quantity.Rate {
	if rapid.Float64Range(0, 1).Draw(t, label+"_unset") < 0.2 {
		return quantity.Rate{}
	}
	return quantity.Rate{N: rapid.IntRange(0, 4).Draw(t, label+"_n"), Per: 10 * time.Minute}
}

// genKills draws kill times within the last 20 minutes.
func genKills(t *rapid.T, label string) []time.Time {
	var ks []time.Time
	for i := range rapid.IntRange(0, 6).Draw(t, label) {
		ks = append(ks, t0.Add(-time.Duration(rapid.IntRange(0, 1200).Draw(t, fmt.Sprintf("%s_%d", label, i)))*time.Second))
	}
	return ks
}

// genGuardedFleet is genFleet with the guards' settings and a kill history.
func genGuardedFleet(t *rapid.T, name string) FleetInput {
	fi := genFleet(t)
	d := *fi.Desired
	d.Spec.Name = name
	r := &d.Spec.Remediation
	r.Rate, r.SecondaryRate = genRate(t, "rate"), genRate(t, "secondary")
	share := quantity.Percent(rapid.IntRange(0, 100).Draw(t, "threshold"))
	r.UnhealthyThreshold = &share
	cool := time.Minute
	r.StormCooldown = &cool
	fi.Desired = &d
	fi.Stats.Kills = genKills(t, "kills")
	for i := range fi.Instances {
		in := &fi.Instances[i]
		for _, x := range []*state.Instance{in.Record} {
			if x != nil {
				x.Fleet = name
			}
		}
		if in.Observed != nil {
			in.Observed.Fleet = name
		}
		if in.Open != nil {
			in.Open.Fleet = name
		}
	}
	return fi
}

// remediationKills counts the kills of a plan the rates count: a drain,
// or a terminate of an instance not drained already, for a remediation
// reason.
func remediationKills(fi *FleetInput, acts []Action) int {
	n := 0
	for _, a := range acts {
		if a.Fleet != fi.Desired.Spec.Name || (a.Kind != ActTerminate && a.Kind != ActDrain) || !isRemediation(a.Reason) {
			continue
		}
		for i := range fi.Instances {
			in := &fi.Instances[i]
			if in.ID == a.InstanceID && (a.Kind == ActDrain || in.Record == nil || !in.Record.Drained || !fi.Desired.Spec.Traffic.Gated()) {
				n++
			}
		}
	}
	return n
}

// surplusOf is how many instances are beyond size + max_surge (launches
// in flight count): they go as a scale-down, whatever their verdict.
func surplusOf(fi *FleetInput) int {
	free := 0
	for i := range fi.Instances {
		in := &fi.Instances[i]
		switch {
		case ignored(fi, in):
		case in.Open != nil && in.Open.Kind == state.Launch:
			free++
		case (in.Open == nil || in.Open.Kind == state.Admit) && in.Observed != nil && in.Observed.Phase == "running":
			free++
		}
	}
	size := fi.Desired.Spec.Size
	if fi.Desired.Draining {
		size = 0
	}
	return free - (size + fi.Desired.Spec.Rollout.MaxSurge.Resolve(fi.Desired.Spec.Size, true))
}

// running and failing count as the planner's guards do, independently.
func runningFailing(fi *FleetInput) (running, failing int) {
	for i := range fi.Instances {
		in := &fi.Instances[i]
		if ignored(fi, in) || in.Observed == nil || in.Observed.Phase != "running" {
			continue
		}
		running++
		if in.Health == Unhealthy || in.Health == NeverHealthy {
			failing++
		}
	}
	return running, failing
}

func TestGuardsNeverExceedTheKillRates(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 3).Draw(t, "fleets")
		in := Input{Now: t0, Limits: Limits{RemediationRate: genRate(t, "global")}, Kills: genKills(t, "global_kills")}
		for i := range n {
			in.Fleets = append(in.Fleets, genGuardedFleet(t, fmt.Sprintf("f%d", i)))
		}
		res := Plan(in)
		total := 0
		for i := range in.Fleets {
			fi := &in.Fleets[i]
			r := fi.Desired.Spec.Remediation.Effective()
			// A scale-down is never held by a rate: instances beyond size +
			// max_surge may go on top.
			kills := max(remediationKills(fi, res.Actions)-max(surplusOf(fi), 0), 0)
			total += kills
			if left := r.Rate.Left(fi.Stats.Kills, t0); left >= 0 && kills > left {
				t.Fatalf("fleet %s: %d remediation kills, rate %s allows %d (kills %v)", fi.Desired.Spec.Name, kills, r.Rate, left, brief(res.Actions))
			}
			running, failing := runningFailing(fi)
			if running >= stormMin && failing >= 2 && failing*100 > r.UnhealthyThreshold.Value*running {
				if left := r.SecondaryRate.Left(fi.Stats.Kills, t0); left >= 0 && kills > left {
					t.Fatalf("fleet %s: %d of %d failing, %d remediation kills, secondary rate %s allows %d", fi.Desired.Spec.Name, failing, running, kills, r.SecondaryRate, left)
				}
			}
			one := Result{Fleets: []FleetStatus{res.Fleets[i]}}
			for _, a := range res.Actions {
				if a.Fleet == fi.Desired.Spec.Name {
					one.Actions = append(one.Actions, a)
				}
			}
			checkInvariants(t, fi, one)
		}
		if left := in.Limits.RemediationRate.Left(in.Kills, t0); left >= 0 && total > left {
			t.Fatalf("%d remediation kills in all fleets, limits.remediation_rate %s allows %d", total, in.Limits.RemediationRate, left)
		}
	})
}

func TestGuardsStormKillsNothingForHealth(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		fi := genGuardedFleet(t, "web")
		fi.Desired.Unconfigured, fi.Desired.Draining = false, false
		fi.ObserveError = ""
		// Every running instance fails.
		for i := range fi.Instances {
			if rapid.Bool().Draw(t, "never") {
				fi.Instances[i].Health = NeverHealthy
			} else {
				fi.Instances[i].Health = Unhealthy
			}
		}
		running, _ := runningFailing(&fi)
		res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
		size := fi.Desired.Spec.Size
		surplus := surplusOf(&fi)
		health := 0
		for _, a := range res.Actions {
			if (a.Kind == ActTerminate || a.Kind == ActDrain) && a.Running && (a.Reason == ReasonUnhealthy || a.Reason == ReasonNeverHealthy) {
				health++
			}
		}
		// A fleet scaled to zero wants none of them: no storm.
		if running >= stormMin && size > 0 && health > max(surplus, 0) {
			t.Fatalf("storm of %d failing instances: %d killed for their health, %d beyond size + max_surge: %v", running, health, max(surplus, 0), brief(res.Actions))
		}
		if running >= stormMin && size > 0 && !res.Fleets[0].Storm {
			t.Fatalf("storm of %d failing instances not reported", running)
		}
	})
}

func TestGuardsPausedFleetStartsNothing(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		fi := genGuardedFleet(t, "web")
		free := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
		p := state.Pause{ID: "p1", Reason: "maintenance", At: t0.Add(-time.Minute)}
		if rapid.Bool().Draw(t, "fleet_pause") {
			p.Fleet = "web"
		}
		res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}, Pauses: []state.Pause{p, {ID: "p2", Fleet: "other", Reason: "x"}}})
		if len(res.Actions) > 0 {
			t.Fatalf("paused fleet acts: %v", brief(res.Actions))
		}
		var held []Action
		for _, h := range res.Held {
			if h.Guard == CausePaused {
				held = append(held, h.Action)
			}
		}
		if fmt.Sprint(brief(held)) != fmt.Sprint(brief(free.Actions)) {
			t.Fatalf("held while paused %v, the plan without the pause %v", brief(held), brief(free.Actions))
		}
		// An expired pause holds nothing.
		p.Until = t0
		again := Plan(Input{Now: t0, Fleets: []FleetInput{fi}, Pauses: []state.Pause{p}})
		if fmt.Sprint(brief(again.Actions)) != fmt.Sprint(brief(free.Actions)) {
			t.Fatalf("expired pause changed the plan: %v, want %v", brief(again.Actions), brief(free.Actions))
		}
	})
}

func TestGuardsReportModeNeverActs(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		fi := genGuardedFleet(t, "web")
		fi.Desired.Draining = false
		r := &fi.Desired.Spec.Remediation
		reported := rapid.SliceOfDistinct(rapid.SampledFrom(state.RemediationReasons), func(s string) string { return s }).Draw(t, "report")
		if rapid.Bool().Draw(t, "mode_report") {
			r.Enabled = false
		} else {
			r.Report = reported
		}
		res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
		for _, a := range res.Actions {
			if (a.Kind == ActTerminate || a.Kind == ActDrain) && a.Running && isRemediation(a.Reason) && r.Reports(string(a.Reason)) {
				t.Fatalf("reported reason %s acted on (enabled %t, report %v): %v", a.Reason, r.Enabled, r.Report, brief(res.Actions))
			}
		}
		checkInvariants(t, &fi, res)
	})
}
