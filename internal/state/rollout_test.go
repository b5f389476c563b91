package state

import (
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/immutd/immutd/internal/quantity"
)

// rolled commits the fleet at digest, records its version and, with
// stable, completes and stabilises it.
func rolled(t *testing.T, s *State, digest string, onFailure string, stable bool) int {
	t.Helper()
	f := fleet("web", 2, digest)
	f.Spec.Rollout.OnFailure = onFailure
	mustApply(t, s, &SetDesired{BaseGeneration: s.Generation, Fleets: []*DesiredFleet{f}, At: t0})
	mustApply(t, s, &RecordVersion{Fleet: "web", ImageDigest: digest, TemplateHash: "t1", At: t0})
	n := s.Fleets["web"].current().N
	if stable {
		mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepComplete, Of: n, At: t0})
		mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepStable, Of: n, At: t0})
	}
	return n
}

func outcomes(d *DesiredFleet) string {
	var out []string
	for _, v := range d.Versions {
		out = append(out, v.Outcome)
	}
	return strings.Join(out, ",")
}

func TestVersionsAndAutoRevert(t *testing.T) {
	s := New()
	v1 := rolled(t, s, "d1", OnFailureRevert, true)
	if d := s.Fleets["web"]; v1 != 1 || outcomes(d) != "stable" || d.Rollout != nil || d.Target().ImageDigest != "d1" {
		t.Fatalf("version 1: %+v", d)
	}
	// A repeated RecordVersion is stale.
	mustApply(t, s, &RecordVersion{Fleet: "web", ImageDigest: "d1", TemplateHash: "t1", At: t0})
	if n := len(s.Fleets["web"].Versions); n != 1 {
		t.Fatalf("%d versions after a repeated record", n)
	}
	v2 := rolled(t, s, "d2", OnFailureRevert, false)
	d := s.Fleets["web"]
	if d.Rollout == nil || d.Rollout.Version != v2 || d.Target().ImageDigest != "d2" {
		t.Fatalf("rollout to version 2: %+v", d.Rollout)
	}
	// Progress moves the deadline; a stale observation changes nothing.
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepProgress, Of: v2, Available: 1, At: t0.Add(time.Minute)})
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepProgress, Of: v1, Available: 2, At: t0.Add(2 * time.Minute)})
	if r := s.Fleets["web"].Rollout; r.Available != 1 || !r.LastProgressAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("progress %+v", r)
	}
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepFailed, Of: v2, Detail: "instance x failed", At: t0.Add(3 * time.Minute)})
	d = s.Fleets["web"]
	if d.Revert == nil || d.Revert.To != v1 || d.Revert.From != v2 || d.Target().ImageDigest != "d1" || outcomes(d) != "stable,failed" {
		t.Fatalf("auto revert: revert %+v, outcomes %s, target %+v", d.Revert, outcomes(d), d.Target())
	}
	if d.LaunchFor("t1").StopGrace != d.Spec.Launch.StopGrace {
		t.Fatal("launch settings of the reverted version")
	}
	// The fleet file names another version: the revert ends, whatever it names.
	rolled(t, s, "d1", OnFailureRevert, false)
	d = s.Fleets["web"]
	if d.Revert != nil || d.Target().Version != 3 || d.Target().ImageDigest != "d1" {
		t.Fatalf("after the file changed: revert %+v target %+v", d.Revert, d.Target())
	}
}

func TestFailedRolloutPausesWithoutAStableVersion(t *testing.T) {
	s := New()
	v1 := rolled(t, s, "d1", OnFailureRevert, false)
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepFailed, Of: v1, Detail: "no progress", At: t0})
	d := s.Fleets["web"]
	if d.Revert != nil || d.Rollout == nil || !d.Rollout.Paused || !strings.Contains(d.Rollout.PauseReason, "no stable version to revert to") {
		t.Fatalf("failed first rollout: revert %+v rollout %+v", d.Revert, d.Rollout)
	}
	// Resume: a fresh deadline, rolling again.
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepResume, At: t0.Add(time.Hour)})
	if r := s.Fleets["web"].Rollout; r == nil || r.Paused || !r.LastProgressAt.Equal(t0.Add(time.Hour)) || outcomes(s.Fleets["web"]) != "rolling" {
		t.Fatalf("resumed: %+v", r)
	}
}

func TestManualRevertAfterCompletionAndItsGuards(t *testing.T) {
	s := New()
	rolled(t, s, "d1", "", true)
	v2 := rolled(t, s, "d2", "", true)
	// A completed rollout can be reverted (ASG cannot).
	if r := mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepRevert, By: "ana", At: t0}); r.Err != "" {
		t.Fatalf("revert after completion: %s", r.Err)
	}
	if d := s.Fleets["web"]; d.Revert == nil || d.Revert.To != 1 || d.Revert.From != v2 || d.Target().ImageDigest != "d1" {
		t.Fatalf("revert: %+v", d.Revert)
	}
	for _, tc := range []struct {
		step *RolloutStep
		err  string
	}{
		{&RolloutStep{Fleet: "web", Step: StepRevert, To: 1, At: t0}, "runs version 1 already"},
		{&RolloutStep{Fleet: "web", Step: StepRevert, To: 9, At: t0}, "version 9 is not kept"},
		{&RolloutStep{Fleet: "web", Step: StepAbort, At: t0}, "no rollout is in progress"},
		{&RolloutStep{Fleet: "web", Step: StepPause, At: t0}, "no rollout is in progress"},
		{&RolloutStep{Fleet: "nope", Step: StepPause, At: t0}, "not known"},
		{&RolloutStep{Fleet: "web", Step: "jump", At: t0}, "unknown rollout step"},
	} {
		if r := mustApply(t, s, tc.step); !strings.Contains(r.Err, tc.err) {
			t.Errorf("%+v: %q, want %q", tc.step, r.Err, tc.err)
		}
	}
	// resume ends the revert: back to the file's version.
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepResume, At: t0})
	if d := s.Fleets["web"]; d.Revert != nil || d.Target().Version != v2 || d.Rollout == nil {
		t.Fatalf("after resume: revert %+v target %+v", d.Revert, d.Target())
	}
	// Only a stable version can be reverted to.
	v3 := rolled(t, s, "d3", "", false)
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepFailed, Of: v3, Detail: "x", At: t0})
	v4 := rolled(t, s, "d4", "", false)
	if r := mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepRevert, To: v3, At: t0}); !strings.Contains(r.Err, "not stable") {
		t.Fatalf("revert to a failed version: %q", r.Err)
	}
	if r := mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepAbort, At: t0}); r.Err != "" || s.Fleets["web"].Revert.To != v2 || s.Fleets["web"].Revert.From != v4 {
		t.Fatalf("abort: %q %+v", r.Err, s.Fleets["web"].Revert)
	}
}

func TestVersionsAreBounded(t *testing.T) {
	s := New()
	for i := range MaxVersions + 5 {
		rolled(t, s, "d"+string(rune('a'+i)), "", true)
	}
	d := s.Fleets["web"]
	if len(d.Versions) != MaxVersions || d.Versions[0].N != 6 {
		t.Fatalf("%d versions kept, oldest %d", len(d.Versions), d.Versions[0].N)
	}
}

// TestRevertNeverGoesToAnUnstableVersion: whatever the leader observes
// and operators ask, in any order, a revert in force always targets a
// kept, stable version other than the file's.
func TestRevertNeverGoesToAnUnstableVersion(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := New()
		digests := []string{"d1", "d2", "d3"}
		for i := range rapid.IntRange(1, 40).Draw(t, "steps") {
			at := t0.Add(time.Duration(i) * time.Second)
			d := s.Fleets["web"]
			of := 0
			if d != nil && len(d.Versions) > 0 {
				of = d.Versions[rapid.IntRange(0, len(d.Versions)-1).Draw(t, "of")].N
			}
			var c Command
			switch rapid.IntRange(0, 4).Draw(t, "kind") {
			case 0:
				f := fleet("web", 2, rapid.SampledFrom(digests).Draw(t, "digest"))
				f.Spec.Rollout.OnFailure = rapid.SampledFrom([]string{"", OnFailureRevert}).Draw(t, "on_failure")
				c = &SetDesired{BaseGeneration: s.Generation, Fleets: []*DesiredFleet{f}, At: at}
			case 1:
				if d == nil {
					continue
				}
				c = &RecordVersion{Fleet: "web", ImageDigest: d.ImageDigest, TemplateHash: d.TemplateHash, At: at}
			case 2:
				step := rapid.SampledFrom([]string{StepProgress, StepComplete, StepStable, StepFailed}).Draw(t, "observe")
				c = &RolloutStep{Fleet: "web", Step: step, Of: of, Available: rapid.IntRange(0, 3).Draw(t, "available"), Detail: "x", At: at}
			default:
				step := rapid.SampledFrom([]string{StepPause, StepResume, StepRevert, StepAbort}).Draw(t, "control")
				c = &RolloutStep{Fleet: "web", Step: step, To: rapid.IntRange(0, 4).Draw(t, "to"), At: at}
			}
			b, err := Encode(c)
			if err != nil {
				t.Fatal(err)
			}
			dc, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			s.Apply(dc)
			if d := s.Fleets["web"]; d != nil && d.Revert != nil {
				v := d.version(d.Revert.To)
				if v == nil || v.Outcome != VersionStable || d.Revert.To == d.current().N {
					t.Fatalf("revert %+v targets %+v (versions %s)", d.Revert, v, versionList(d.Versions))
				}
			}
		}
	})
}

func TestCheckpointsPauseAndResumeInPlace(t *testing.T) {
	s := New()
	rolled(t, s, "d1", "", true)
	f := fleet("web", 4, "d2")
	f.Spec.Rollout.Checkpoints = []quantity.Q{quantity.Percent(25), quantity.Percent(50)}
	f.Spec.Rollout.CheckpointPause = time.Minute
	mustApply(t, s, &SetDesired{BaseGeneration: s.Generation, Fleets: []*DesiredFleet{f}, At: t0})
	mustApply(t, s, &RecordVersion{Fleet: "web", ImageDigest: "d2", TemplateHash: "t1", At: t0})
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepProgress, Of: 2, Available: 1, At: t0})
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepCheckpoint, Of: 2, Detail: "1 of 4", At: t0})
	r := s.Fleets["web"].Rollout
	if !r.Paused || r.Checkpoints != 1 || !r.PausedUntil.Equal(t0.Add(time.Minute)) || !strings.Contains(r.PauseReason, "checkpoint 25%") {
		t.Fatalf("at the checkpoint: %+v", r)
	}
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepResume, Of: 2, At: t0.Add(time.Minute)})
	r = s.Fleets["web"].Rollout
	if r.Paused || r.Checkpoints != 1 || r.Available != 1 || !r.LastProgressAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("resumed in place: %+v", r)
	}
}

func TestRevertConfirmed(t *testing.T) {
	s := New()
	rolled(t, s, "d1", "", true)
	rolled(t, s, "d2", "", true)
	if r := mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepConfirm, At: t0}); !strings.Contains(r.Err, "no revert") {
		t.Fatalf("confirm without a revert: %q", r.Err)
	}
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepRevert, At: t0})
	mustApply(t, s, &RolloutStep{Fleet: "web", Step: StepConfirm, By: "ana", At: t0.Add(time.Minute)})
	rv := s.Fleets["web"].Revert
	if rv == nil || rv.ConfirmedBy != "ana" || !rv.ConfirmedAt.Equal(t0.Add(time.Minute)) || s.Fleets["web"].Target().ImageDigest != "d1" {
		t.Fatalf("confirmed revert %+v", rv)
	}
}
