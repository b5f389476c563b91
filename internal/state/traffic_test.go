package state

import (
	"strings"
	"testing"
	"time"
)

func gated(name string, size int, digest string) *DesiredFleet {
	f := fleet(name, size, digest)
	f.Spec.Traffic = &TrafficSpec{MinReady: time.Second, DrainDelay: time.Second, KeepMin: 1, BackendTimeout: time.Minute,
		Files: []TrafficFile{{Name: "t", Path: "/t.json"}}}
	return f
}

// An older release knows version 1 of SetDesired and CommitIntents:
// what it could not apply as this release does is written as version 2,
// which it refuses (and stops) instead of applying it differently.
func TestTrafficEntriesAreVersion2AndOthersStay1(t *testing.T) {
	cases := []struct {
		name string
		c    Command
		want uint8
	}{
		{"desired without traffic", &SetDesired{Fleets: []*DesiredFleet{fleet("web", 1, "d")}}, 1},
		{"desired with traffic", &SetDesired{Fleets: []*DesiredFleet{fleet("a", 1, "d"), gated("web", 1, "d")}}, 2},
		{"desired with a consul check", &SetDesired{Fleets: []*DesiredFleet{func() *DesiredFleet {
			f := fleet("web", 1, "d")
			f.Spec.Health.Checks = []Check{{Name: "port", Kind: "tcp"}, {Name: "c", Kind: "consul", Consul: &ConsulCheck{Address: "127.0.0.1:8500"}}}
			return f
		}()}}, 2},
		{"launch and terminate", &CommitIntents{Intents: []*Intent{{Kind: Launch}, {Kind: Terminate}}}, 1},
		{"a drain", &CommitIntents{Intents: []*Intent{{Kind: Launch}, {Kind: Drain}}}, 2},
		{"an admission", &CommitIntents{Intents: []*Intent{{Kind: Admit}}}, 2},
	}
	for _, tc := range cases {
		b, err := Encode(tc.c)
		if err != nil {
			t.Fatal(err)
		}
		if b[1] != tc.want {
			t.Errorf("%s: encoded as version %d, want %d", tc.name, b[1], tc.want)
		}
		if _, err := Decode(b); err != nil {
			t.Errorf("%s: this release does not decode it: %v", tc.name, err)
		}
	}
}

func TestAdmitDrainTerminateLifecycle(t *testing.T) {
	s := New()
	mustApply(t, s, &SetDesired{Fleets: []*DesiredFleet{gated("web", 1, "d1")}, At: t0})
	mustApply(t, s, &CommitIntents{Generation: 1, At: t0, Intents: []*Intent{{OpID: "l", Kind: Launch, Fleet: "web", InstanceID: "web-1", ImageDigest: "d1", Image: "/img/v1", Term: 1}}})
	mustApply(t, s, &CompleteIntent{OpID: "l", Term: 1, Outcome: Done, At: t0})
	if rec := s.Instances["web-1"]; rec.Image != "/img/v1" || rec.Admitted {
		t.Fatalf("launched record %+v", rec)
	}
	commit := func(it *Intent) Result {
		t.Helper()
		it.Fleet, it.InstanceID, it.Term = "web", "web-1", 1
		return mustApply(t, s, &CommitIntents{Generation: 1, At: t0, Intents: []*Intent{it}})
	}
	if res := commit(&Intent{OpID: "d0", Kind: Drain}); !strings.Contains(res.Rejected["d0"], "not admitted") {
		t.Fatalf("drain of an instance not admitted: %+v", res)
	}
	if res := commit(&Intent{OpID: "a", Kind: Admit}); len(res.Accepted) != 1 {
		t.Fatalf("admit: %+v", res)
	}
	mustApply(t, s, &CompleteIntent{OpID: "a", Term: 1, Outcome: Done, At: t0.Add(time.Second)})
	if rec := s.Instances["web-1"]; !rec.Admitted || !rec.AdmittedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("admitted record %+v", rec)
	}
	if res := commit(&Intent{OpID: "t0", Kind: Terminate}); !strings.Contains(res.Rejected["t0"], "drained before it is terminated") {
		t.Fatalf("terminate of an admitted instance: %+v", res)
	}
	if res := commit(&Intent{OpID: "a2", Kind: Admit}); !strings.Contains(res.Rejected["a2"], "admitted already") {
		t.Fatalf("second admit: %+v", res)
	}
	commit(&Intent{OpID: "dr", Kind: Drain, Reason: "drift_image"})
	// The removal time is kept once: a later leader repeating the step
	// does not restart the drain delay. A deposed leader cannot record it.
	if res := mustApply(t, s, &DrainRemoved{OpID: "dr", Term: 0, At: t0}); res.Err == "" {
		t.Fatal("drain step from an older term accepted")
	}
	mustApply(t, s, &DrainRemoved{OpID: "dr", Term: 1, At: t0.Add(2 * time.Second)})
	mustApply(t, s, &DrainRemoved{OpID: "dr", Term: 2, At: t0.Add(9 * time.Second)})
	if it := s.Intents["dr"]; !it.RemovedAt.Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("removed at %v", it.RemovedAt)
	}
	mustApply(t, s, &CompleteIntent{OpID: "dr", Term: 1, Outcome: Done, At: t0.Add(3 * time.Second)})
	if rec := s.Instances["web-1"]; rec.Admitted || !rec.Drained {
		t.Fatalf("drained record %+v", rec)
	}
	if res := commit(&Intent{OpID: "t", Kind: Terminate}); len(res.Accepted) != 1 {
		t.Fatalf("terminate of a drained instance: %+v", res)
	}
	var actions []string
	for _, e := range s.Events {
		if e.InstanceID == "web-1" {
			actions = append(actions, string(e.Action))
		}
	}
	want := "launch_planned launched admit_planned admitted drain_planned traffic_removed drained terminate_planned"
	if got := strings.Join(actions, " "); got != want {
		t.Fatalf("events %q\nwant   %q", got, want)
	}
}

// A fleet whose traffic block is removed leaves nothing to drain from:
// its instances' traffic flags are cleared, so they can be terminated.
func TestUngatedFleetForgetsAdmissions(t *testing.T) {
	s := New()
	mustApply(t, s, &SetDesired{Fleets: []*DesiredFleet{gated("web", 1, "d1")}, At: t0})
	mustApply(t, s, &Adopt{Instances: []*Instance{{ID: "web-1", Fleet: "web", ImageDigest: "d1"}}, At: t0})
	mustApply(t, s, &CommitIntents{Generation: 1, At: t0, Intents: []*Intent{{OpID: "a", Kind: Admit, Fleet: "web", InstanceID: "web-1", Term: 1}}})
	mustApply(t, s, &CompleteIntent{OpID: "a", Term: 1, Outcome: Done, At: t0})
	if !s.Instances["web-1"].Admitted {
		t.Fatal("not admitted")
	}
	mustApply(t, s, &SetDesired{BaseGeneration: 1, Fleets: []*DesiredFleet{fleet("web", 1, "d1")}, At: t0})
	if rec := s.Instances["web-1"]; rec.Admitted || rec.Drained {
		t.Fatalf("record after the gate went: %+v", rec)
	}
	res := mustApply(t, s, &CommitIntents{Generation: 2, At: t0, Intents: []*Intent{{OpID: "a2", Kind: Admit, Fleet: "web", InstanceID: "web-1"}}})
	if !strings.Contains(res.Rejected["a2"], "without traffic backends") {
		t.Fatalf("admission in an ungated fleet: %+v", res)
	}
}
