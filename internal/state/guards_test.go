package state

import (
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/quantity"
)

func TestGuardedSpecsAreVersion3(t *testing.T) {
	guarded := fleet("web", 1, "d")
	guarded.Spec.Remediation.Rate = quantity.Rate{N: 1, Per: time.Minute}
	cases := []struct {
		name string
		c    Command
		want uint8
	}{
		{"defaults only", &SetDesired{Fleets: []*DesiredFleet{fleet("a", 1, "d")}}, 1},
		{"a kill rate set", &SetDesired{Fleets: []*DesiredFleet{gated("a", 1, "d"), guarded}}, 3},
		{"a kill rate after a gated fleet", &SetDesired{Fleets: []*DesiredFleet{guarded, gated("a", 1, "d")}}, 3},
	}
	for _, tc := range cases {
		b, err := Encode(tc.c)
		if err != nil {
			t.Fatal(err)
		}
		if b[1] != tc.want {
			t.Errorf("%s: encoded as version %d, want %d", tc.name, b[1], tc.want)
		}
	}
}

// The guards' settings are kept only where they differ from the
// defaults, so an upgrade commits nothing new for unchanged files.
func TestSpecKeepsOnlyGuardsThatDifferFromDefaults(t *testing.T) {
	r := config.Remediation{Enabled: true, Mode: "act", Rate: config.DefaultFleetRate, SecondaryRate: config.DefaultSecondaryRate,
		UnhealthyThreshold: &config.DefaultUnhealthyShare, StormCooldown: config.DefaultStormCooldown, StormGuard: true,
		FlapThreshold: config.DefaultFlapThreshold, FlapWindow: config.DefaultFlapWindow, MaxLaunchFailures: config.DefaultMaxLaunchFailures}
	s := remediationOf(&r)
	if s.Guarded() {
		t.Fatalf("defaults are kept in the spec: %+v", s)
	}
	eff := s.Effective()
	if eff.Rate != config.DefaultFleetRate || *eff.StormCooldown != config.DefaultStormCooldown || *eff.UnhealthyThreshold != config.DefaultUnhealthyShare {
		t.Fatalf("effective %+v does not give the defaults", eff)
	}
	r.StormCooldown, r.StormGuard, r.FlapThreshold = 0, false, 0
	s = remediationOf(&r)
	if s.StormCooldown == nil || *s.StormCooldown != 0 || !s.NoStormGuard || s.FlapThreshold == nil || *s.FlapThreshold != 0 || !s.Guarded() {
		t.Fatalf("an explicit 0s cooldown, storm_guard = false and flap_threshold = 0 are lost: %+v", s)
	}
}

func TestRemediationKillsAreLogged(t *testing.T) {
	s := seed(t)
	mustApply(t, s, &Adopt{Instances: []*Instance{{ID: "a", Fleet: "web"}, {ID: "b", Fleet: "web"}, {ID: "c", Fleet: "web"}}, At: t0})
	mustApply(t, s, &CommitIntents{Generation: 1, At: t0.Add(time.Second), Intents: []*Intent{
		{OpID: "k1", Kind: Terminate, Fleet: "web", InstanceID: "a", Reason: "unhealthy"},
		{OpID: "k2", Kind: Terminate, Fleet: "web", InstanceID: "b", Reason: "drift_image"}, // a rollout: not counted
		{OpID: "k3", Kind: Terminate, Fleet: "web", InstanceID: "c", Reason: "drift_mutated"},
	}})
	if got := len(s.Stats["web"].Kills); got != 2 {
		t.Fatalf("fleet kill log %v, want the 2 remediation kills", s.Stats["web"].Kills)
	}
	if got := len(s.Kills); got != 2 {
		t.Fatalf("cluster kill log %v, want 2", s.Kills)
	}
	// The log is bounded.
	for i := range MaxKillLog + 10 {
		s.noteKill(&Intent{Kind: Drain, Fleet: "web", InstanceID: "x", Reason: "orphan"}, t0.Add(time.Duration(i)*time.Second))
	}
	if len(s.Kills) != MaxKillLog || len(s.Stats["web"].Kills) != MaxKillLog || !s.Kills[MaxKillLog-1].Equal(t0.Add(time.Duration(MaxKillLog+9)*time.Second)) {
		t.Fatalf("kill log not bounded to the latest %d: %d entries", MaxKillLog, len(s.Kills))
	}
}

func TestTerminateAfterDrainIsOneKill(t *testing.T) {
	s := New()
	mustApply(t, s, &SetDesired{Fleets: []*DesiredFleet{gated("web", 1, "d")}, At: t0})
	mustApply(t, s, &Adopt{Instances: []*Instance{{ID: "a", Fleet: "web", Admitted: true}}, At: t0})
	mustApply(t, s, &CommitIntents{Generation: 1, At: t0, Intents: []*Intent{{OpID: "d1", Kind: Drain, Fleet: "web", InstanceID: "a", Reason: "unhealthy"}}})
	mustApply(t, s, &CompleteIntent{OpID: "d1", Outcome: Done, At: t0})
	mustApply(t, s, &CommitIntents{Generation: 1, At: t0, Intents: []*Intent{{OpID: "t1", Kind: Terminate, Fleet: "web", InstanceID: "a", Reason: "unhealthy"}}})
	if got := len(s.Kills); got != 1 {
		t.Fatalf("drain then terminate logged %d kills, want 1", got)
	}
}

func TestPausesStackAndExpire(t *testing.T) {
	s := seed(t)
	r := mustApply(t, s, &AddPause{Reason: "network maintenance", By: "ana", At: t0})
	if r.Err != "" || len(r.Accepted) != 1 || r.Accepted[0] != "p1" {
		t.Fatalf("add: %+v", r)
	}
	mustApply(t, s, &AddPause{Fleet: "web", Reason: "db migration", For: time.Hour, At: t0})
	for _, bad := range []*AddPause{{Reason: "", At: t0}, {Reason: strings.Repeat("x", MaxPauseReason+1), At: t0}, {Fleet: "nope", Reason: "x", At: t0}, {Reason: "x", For: -time.Second, At: t0}} {
		if r := mustApply(t, s, bad); r.Err == "" {
			t.Errorf("pause %+v accepted", bad)
		}
	}
	if len(s.Pauses) != 2 || !s.Pauses[1].Holds("web", t0.Add(59*time.Minute)) || s.Pauses[1].Holds("web", t0.Add(time.Hour)) || s.Pauses[1].Holds("api", t0) {
		t.Fatalf("pauses %+v", s.Pauses)
	}
	if !s.Pauses[0].Holds("any", t0.Add(1000*time.Hour)) {
		t.Fatal("a pause without a duration expired")
	}
	if r := mustApply(t, s, &Unpause{ID: "p9", At: t0}); !strings.Contains(r.Err, `no pause "p9"`) {
		t.Fatalf("unpause of an unknown id: %+v", r)
	}
	// The expired one goes with the next pause command, with an event.
	r = mustApply(t, s, &Unpause{ID: "p1", At: t0.Add(2 * time.Hour)})
	if r.Err != "" || len(s.Pauses) != 0 {
		t.Fatalf("unpause: %+v, left %+v", r, s.Pauses)
	}
	var reasons []string
	for _, e := range s.Events {
		if e.Action == ActionUnpaused {
			reasons = append(reasons, e.Reason)
		}
	}
	if strings.Join(reasons, ",") != "expired,operator" {
		t.Fatalf("unpause events %v", reasons)
	}
	for range MaxPauses {
		mustApply(t, s, &AddPause{Reason: "x", At: t0})
	}
	if r := mustApply(t, s, &AddPause{Reason: "one too many", At: t0}); !strings.Contains(r.Err, "pauses are in force already") {
		t.Fatalf("pause beyond the bound: %+v", r)
	}
	mustApply(t, s, &Unpause{All: true, At: t0})
	if len(s.Pauses) != 0 {
		t.Fatalf("unpause all left %+v", s.Pauses)
	}
}

func TestStormsAreRecordedOnce(t *testing.T) {
	s := seed(t)
	on, off := true, false
	mustApply(t, s, &RecordStorms{Fleets: map[string]bool{"web": true, "gone": true}, Cluster: &on, At: t0})
	mustApply(t, s, &RecordStorms{Fleets: map[string]bool{"web": true}, At: t0.Add(time.Second)})
	if st := s.Stats["web"].Storm; !st.Active || !st.Since.Equal(t0) || !s.Storm.Active {
		t.Fatalf("storm %+v, cluster %+v", st, s.Storm)
	}
	mustApply(t, s, &RecordStorms{Fleets: map[string]bool{"web": false}, Cluster: &off, At: t0.Add(time.Minute)})
	if st := s.Stats["web"].Storm; st.Active || !st.EndedAt.Equal(t0.Add(time.Minute)) || s.Storm.Active {
		t.Fatalf("storm after its end %+v", st)
	}
	n := 0
	for _, e := range s.Events {
		if e.Action == ActionStormStarted || e.Action == ActionStormEnded {
			n++
		}
	}
	if n != 4 || s.Stats["gone"] != nil {
		t.Fatalf("%d storm events, want 4 (fleet and cluster, start and end); unknown fleet stats %+v", n, s.Stats["gone"])
	}
	// An older release stops at the entry rather than skip it and hold
	// another state once upgraded.
	b, _ := Encode(&RecordStorms{At: t0})
	if CommandType(b[0])&Ignorable != 0 {
		t.Fatal("storm records are ignorable")
	}
}

func TestQuarantine(t *testing.T) {
	s := New()
	f := gated("web", 2, "d")
	f.Spec.Remediation.Quarantine = &QuarantineSpec{Max: 1, TTL: time.Hour, Reasons: RemediationReasons}
	mustApply(t, s, &SetDesired{Fleets: []*DesiredFleet{f, fleet("api", 1, "d")}, At: t0})
	mustApply(t, s, &Adopt{Instances: []*Instance{{ID: "a", Fleet: "web"}, {ID: "b", Fleet: "web", Admitted: true}, {ID: "c", Fleet: "web"}, {ID: "x", Fleet: "api"}}, At: t0})
	r := mustApply(t, s, &Quarantine{At: t0, Entries: []QuarantineEntry{
		{Fleet: "web", InstanceID: "b", Reason: "unhealthy"}, // admitted: drained first
		{Fleet: "web", InstanceID: "a", Reason: "unhealthy", Evidence: []string{"probe failed"}},
		{Fleet: "web", InstanceID: "c", Reason: "unhealthy"}, // beyond max 1
		{Fleet: "api", InstanceID: "x", Reason: "unhealthy"}, // no quarantine in api
	}})
	if len(r.Accepted) != 1 || r.Accepted[0] != "a" || len(r.Rejected) != 3 {
		t.Fatalf("quarantine: %+v", r)
	}
	if rec := s.Instances["a"]; !rec.Quarantined || !rec.QuarantinedAt.Equal(t0) || rec.QuarantineReason != "unhealthy" {
		t.Fatalf("record %+v", rec)
	}
	if len(s.Kills) != 1 {
		t.Fatalf("a quarantine is a kill for the rates: %v", s.Kills)
	}
	ev := s.Events[len(s.Events)-1]
	if ev.Action != ActionQuarantined || !strings.Contains(strings.Join(ev.Evidence, " "), "until "+t0.Add(time.Hour).Format(time.RFC3339)) {
		t.Fatalf("event %+v", ev)
	}
	// Its terminate at the end of the ttl is not a remediation kill.
	mustApply(t, s, &CommitIntents{Generation: 1, At: t0.Add(time.Hour), Intents: []*Intent{{OpID: "t", Kind: Terminate, Fleet: "web", InstanceID: "a", Reason: "quarantine_expired"}}})
	if len(s.Kills) != 1 {
		t.Fatalf("the terminate after the quarantine counted as a kill: %v", s.Kills)
	}
}

func TestLaunchFailuresAreClearedByRetryAndByAFileChange(t *testing.T) {
	s := seed(t)
	s.stats("web").LaunchFailures = 7
	if r := mustApply(t, s, &RetryFleet{Fleet: "nope", At: t0}); r.Err == "" {
		t.Fatal("retry of an unknown fleet accepted")
	}
	mustApply(t, s, &RetryFleet{Fleet: "web", By: "ana", At: t0})
	if n := s.Stats["web"].LaunchFailures; n != 0 {
		t.Fatalf("after retry: %d launch failures", n)
	}
	if ev := s.Events[len(s.Events)-1]; ev.Action != ActionLaunchRetry || !strings.Contains(strings.Join(ev.Evidence, " "), "7 consecutive launch failures") {
		t.Fatalf("retry event %+v", ev)
	}
	s.stats("web").LaunchFailures = 4
	mustApply(t, s, &SetDesired{BaseGeneration: s.Generation, Fleets: []*DesiredFleet{fleet("web", 2, "d1")}, At: t0}) // unchanged
	if n := s.Stats["web"].LaunchFailures; n != 4 {
		t.Fatalf("an unchanged file cleared the launch failures (%d)", n)
	}
	mustApply(t, s, &SetDesired{BaseGeneration: s.Generation, Fleets: []*DesiredFleet{fleet("web", 2, "d2")}, At: t0})
	if n := s.Stats["web"].LaunchFailures; n != 0 {
		t.Fatalf("a changed file kept %d launch failures", n)
	}
}
