package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func fleet(name string, size int, digest string) *DesiredFleet {
	return &DesiredFleet{Spec: FleetSpec{Name: name, Size: size, Provider: "fake", Image: "/img/" + digest}, ImageDigest: digest, TemplateHash: "t1"}
}

func mustApply(t *testing.T, s *State, c Command) Result {
	t.Helper()
	// Every command goes through its encoding, as in the log.
	b, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	// Records are replaced, never changed in place (the leader's pass
	// keeps pointers to them): every record held before the command is
	// as it was after it.
	held := map[*Instance]Instance{}
	for _, in := range s.Instances {
		held[in] = *in
	}
	res := s.Apply(d)
	for p, was := range held {
		if !reflect.DeepEqual(*p, was) {
			t.Fatalf("%T changed record %s in place: %+v, was %+v", c, was.ID, *p, was)
		}
	}
	return res
}

func TestEncodeDecode(t *testing.T) {
	c := &CommitIntents{Generation: 3, Intents: []*Intent{{OpID: "op", Kind: Launch, Fleet: "web", InstanceID: "web-1"}}, At: t0}
	b, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != byte(TypeCommitIntents) || b[1] != 1 {
		t.Fatalf("header %v", b[:2])
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip: got %+v want %+v", got, c)
	}
	if _, err := Decode([]byte{byte(Ignorable | 77), 1, '{', '}'}); !errors.Is(err, ErrUnknownIgnorable) {
		t.Fatalf("unknown ignorable: %v", err)
	}
	if _, err := Decode([]byte{77, 1, '{', '}'}); err == nil || !strings.Contains(err.Error(), "unknown command type 77") {
		t.Fatalf("unknown type: %v", err)
	}
	if _, err := Decode([]byte{byte(TypeSetDesired), 9, '{', '}'}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer version: %v", err)
	}
	if _, err := Decode([]byte{1}); err == nil {
		t.Fatal("short entry decoded")
	}
}

func TestSetDesiredGenerations(t *testing.T) {
	s := New()
	r := mustApply(t, s, &SetDesired{BaseGeneration: 0, SourceHash: "h1", Fleets: []*DesiredFleet{fleet("web", 3, "d1"), fleet("api", 1, "d1")}, At: t0})
	if r.Err != "" || r.Generation != 1 || !reflect.DeepEqual(r.Changed, []string{"api", "web"}) {
		t.Fatalf("first: %+v", r)
	}
	// Stale base is rejected.
	if r := mustApply(t, s, &SetDesired{BaseGeneration: 0, Fleets: []*DesiredFleet{fleet("web", 4, "d1")}, At: t0}); r.Err == "" {
		t.Fatal("stale base accepted")
	}
	// Same content: no new generation.
	if r := mustApply(t, s, &SetDesired{BaseGeneration: 1, SourceHash: "h2", ProposerID: "n1", Node: "node-1", Fleets: []*DesiredFleet{fleet("web", 3, "d1"), fleet("api", 1, "d1")}, At: t0}); r.Generation != 1 || len(r.Changed) != 0 {
		t.Fatalf("no-op bumped: %+v", r)
	}
	if s.SourceHash != "h2" || s.SourceNode != "node-1" || s.Proposed["n1"] != "h2" {
		t.Fatalf("proposal not recorded: %q %q %v", s.SourceHash, s.SourceNode, s.Proposed)
	}
	// A re-pin by the leader (no proposer) leaves the proposals alone.
	mustApply(t, s, &SetDesired{BaseGeneration: 1, SourceHash: "ignored", Fleets: []*DesiredFleet{fleet("web", 3, "d1"), fleet("api", 1, "d1")}, At: t0})
	if s.SourceHash != "h2" || len(s.Proposed) != 1 {
		t.Fatalf("re-pin changed the proposals: %q %v", s.SourceHash, s.Proposed)
	}
	// A change bumps only the changed fleet's generation; a removed fleet is kept, unconfigured.
	r = mustApply(t, s, &SetDesired{BaseGeneration: 1, Fleets: []*DesiredFleet{fleet("web", 3, "d2")}, At: t0.Add(time.Minute)})
	if r.Generation != 2 || !reflect.DeepEqual(r.Changed, []string{"api", "web"}) {
		t.Fatalf("second: %+v", r)
	}
	if s.Fleets["web"].Generation != 2 || s.Fleets["web"].ImageDigest != "d2" {
		t.Fatalf("web: %+v", s.Fleets["web"])
	}
	api := s.Fleets["api"]
	if api == nil || !api.Unconfigured || api.Draining || !api.UnconfiguredSince.Equal(t0.Add(time.Minute)) {
		t.Fatalf("api must stay, unconfigured: %+v", api)
	}
	// Configured again: back to normal.
	mustApply(t, s, &SetDesired{BaseGeneration: 2, Fleets: []*DesiredFleet{fleet("web", 3, "d2"), fleet("api", 1, "d1")}, At: t0})
	if s.Fleets["api"].Unconfigured {
		t.Fatal("api still unconfigured")
	}
	// Auto drain: removed and drained; forgotten at once since it has no instances.
	mustApply(t, s, &SetDesired{BaseGeneration: 3, Fleets: []*DesiredFleet{fleet("web", 3, "d2")}, AutoDrain: true, At: t0})
	if s.Fleets["api"] != nil {
		t.Fatalf("empty drained fleet not forgotten: %+v", s.Fleets["api"])
	}
}

func seed(t *testing.T) *State {
	s := New()
	mustApply(t, s, &SetDesired{Fleets: []*DesiredFleet{fleet("web", 2, "d1")}, At: t0})
	return s
}

func TestIntentLifecycle(t *testing.T) {
	s := seed(t)
	launch := &Intent{OpID: "op1", Kind: Launch, Fleet: "web", InstanceID: "web-a", Reason: "scale_up", Term: 2, Generation: 1, ImageDigest: "d1", TemplateHash: "t1"}
	r := mustApply(t, s, &CommitIntents{Generation: 1, Intents: []*Intent{launch}, At: t0})
	if !reflect.DeepEqual(r.Accepted, []string{"op1"}) {
		t.Fatalf("commit: %+v", r)
	}
	// A second intent on the same instance, a reused op id and a stale plan are rejected.
	r = mustApply(t, s, &CommitIntents{Generation: 1, Intents: []*Intent{
		{OpID: "op2", Kind: Terminate, Fleet: "web", InstanceID: "web-a"},
		{OpID: "op1", Kind: Launch, Fleet: "web", InstanceID: "web-b", ImageDigest: "d1"},
		{OpID: "op3", Kind: Launch, Fleet: "nope", InstanceID: "nope-1", ImageDigest: "d1"},
	}, At: t0})
	if len(r.Accepted) != 0 || len(r.Rejected) != 3 {
		t.Fatalf("conflicts: %+v", r)
	}
	if r := mustApply(t, s, &CommitIntents{Generation: 7, Intents: []*Intent{{OpID: "op4", Kind: Launch, Fleet: "web", InstanceID: "web-c", ImageDigest: "d1"}}}); r.Err == "" {
		t.Fatal("stale plan accepted")
	}
	// Completion from an older term is refused; from the owner's term accepted.
	if r := mustApply(t, s, &CompleteIntent{OpID: "op1", Term: 1, Outcome: Done}); r.Err == "" {
		t.Fatal("completion from an old term accepted")
	}
	obs := &instance.Observed{ID: "web-a", Address: "127.0.0.1:1", StartedAt: t0.Add(time.Second), ProviderRef: "42"}
	if r := mustApply(t, s, &CompleteIntent{OpID: "op1", Term: 2, Outcome: Done, Observed: obs, At: t0}); r.Err != "" {
		t.Fatal(r.Err)
	}
	rec := s.Instances["web-a"]
	if rec == nil || rec.Address != "127.0.0.1:1" || rec.LaunchOp != "op1" || !rec.CreatedAt.Equal(t0.Add(time.Second)) || len(s.Intents) != 0 {
		t.Fatalf("record after launch: %+v, intents %v", rec, s.Intents)
	}
	if r := mustApply(t, s, &CompleteIntent{OpID: "op1", Term: 2, Outcome: Done}); r.Err == "" {
		t.Fatal("completing twice accepted")
	}
	// A new leader claims, then terminates.
	mustApply(t, s, &CommitIntents{Generation: 1, Intents: []*Intent{{OpID: "op5", Kind: Terminate, Fleet: "web", InstanceID: "web-a", Reason: "unhealthy", Term: 2}}, At: t0})
	if r := mustApply(t, s, &ClaimIntents{OpIDs: []string{"op5", "missing"}, Term: 5}); !reflect.DeepEqual(r.Accepted, []string{"op5"}) {
		t.Fatalf("claim: %+v", r)
	}
	if s.Intents["op5"].Term != 5 || s.Intents["op5"].Attempts != 1 {
		t.Fatalf("claimed intent: %+v", s.Intents["op5"])
	}
	if r := mustApply(t, s, &CompleteIntent{OpID: "op5", Term: 2, Outcome: Done}); r.Err == "" {
		t.Fatal("deposed leader completed a claimed intent")
	}
	mustApply(t, s, &CompleteIntent{OpID: "op5", Term: 5, Outcome: Done, At: t0})
	if len(s.Instances) != 0 {
		t.Fatalf("record survived terminate: %v", s.Instances)
	}
	if s.Finished["done"] != 2 {
		t.Fatalf("finished: %v", s.Finished)
	}
	actions := []string{}
	for _, e := range s.Events {
		actions = append(actions, string(e.Action))
	}
	want := []string{"desired_changed", "launch_planned", "launched", "terminate_planned", "terminated"}
	if !reflect.DeepEqual(actions, want) {
		t.Fatalf("events %v, want %v", actions, want)
	}
}

func TestLaunchFailureCountersAndReset(t *testing.T) {
	s := seed(t)
	commit := func(it *Intent) {
		t.Helper()
		it.Fleet, it.Generation, it.ImageDigest, it.TemplateHash = "web", 1, "d1", "t1"
		if r := mustApply(t, s, &CommitIntents{Generation: 1, Intents: []*Intent{it}, At: t0}); len(r.Accepted) != 1 {
			t.Fatalf("commit %+v: %+v", it, r)
		}
	}
	commit(&Intent{OpID: "l1", Kind: Launch, InstanceID: "web-1"})
	mustApply(t, s, &CompleteIntent{OpID: "l1", Outcome: Failed, Error: "exec format error", At: t0})
	commit(&Intent{OpID: "l2", Kind: Launch, InstanceID: "web-2"})
	mustApply(t, s, &CompleteIntent{OpID: "l2", Outcome: Done, At: t0})
	commit(&Intent{OpID: "k2", Kind: Terminate, InstanceID: "web-2", Reason: "never_healthy"})
	if st := s.Stats["web"]; st == nil || st.LaunchFailures != 2 || st.LastFailureReason != "never_healthy" {
		t.Fatalf("stats: %+v", s.Stats["web"])
	}
	commit(&Intent{OpID: "l3", Kind: Launch, InstanceID: "web-3"})
	mustApply(t, s, &CompleteIntent{OpID: "l3", Outcome: Done, At: t0})
	mustApply(t, s, &MarkHealthy{InstanceIDs: []string{"web-3"}})
	if s.Stats["web"].LaunchFailures != 0 || !s.Instances["web-3"].EverHealthy {
		t.Fatalf("healthy instance did not reset the counter: %+v", s.Stats["web"])
	}
	// Killing a once-healthy instance is not a launch failure.
	commit(&Intent{OpID: "k3", Kind: Terminate, InstanceID: "web-3", Reason: "exited"})
	if s.Stats["web"].LaunchFailures != 0 {
		t.Fatalf("counted a healthy instance's exit as a launch failure")
	}
}

func TestDrainAndForget(t *testing.T) {
	s := seed(t)
	if r := mustApply(t, s, &DrainFleet{Fleet: "web"}); !strings.Contains(r.Err, "still configured") {
		t.Fatalf("draining a configured fleet: %+v", r)
	}
	if r := mustApply(t, s, &DrainFleet{Fleet: "nope"}); !strings.Contains(r.Err, "not known") {
		t.Fatalf("draining an unknown fleet: %+v", r)
	}
	mustApply(t, s, &CommitIntents{Generation: 1, Intents: []*Intent{{OpID: "l", Kind: Launch, Fleet: "web", InstanceID: "web-1", ImageDigest: "d1"}}})
	mustApply(t, s, &CompleteIntent{OpID: "l", Outcome: Done})
	mustApply(t, s, &SetDesired{BaseGeneration: 1, Fleets: nil, At: t0})
	if r := mustApply(t, s, &DrainFleet{Fleet: "web", At: t0}); r.Err != "" {
		t.Fatal(r.Err)
	}
	if s.Fleets["web"] == nil || !s.Fleets["web"].Draining {
		t.Fatal("fleet with an instance must stay while draining")
	}
	mustApply(t, s, &CommitIntents{Generation: 2, Intents: []*Intent{{OpID: "k", Kind: Terminate, Fleet: "web", InstanceID: "web-1", Reason: "drain"}}})
	mustApply(t, s, &CompleteIntent{OpID: "k", Outcome: Done, At: t0})
	if s.Fleets["web"] != nil {
		t.Fatal("drained fleet not forgotten")
	}
	if e := s.Events[len(s.Events)-1]; e.Action != "fleet_forgotten" {
		t.Fatalf("last event %+v", e)
	}
}

func TestAdoptOnlyUnexplainedInstances(t *testing.T) {
	s := seed(t)
	r := mustApply(t, s, &Adopt{Instances: []*Instance{{ID: "web-x", Fleet: "web"}, {ID: "ghost-1", Fleet: "ghost"}}, At: t0})
	if !reflect.DeepEqual(r.Accepted, []string{"web-x"}) || !s.Instances["web-x"].Adopted {
		t.Fatalf("adopt: %+v", r)
	}
	if r := mustApply(t, s, &Adopt{Instances: []*Instance{{ID: "web-x", Fleet: "web"}}}); len(r.Accepted) != 0 {
		t.Fatal("adopted twice")
	}
}

func TestEventsAreBounded(t *testing.T) {
	s := New()
	total := 3 * MaxEvents
	for i := 0; i < total; i++ {
		mustApply(t, s, &RecordEvents{Events: []Event{{Action: "x"}}})
		if len(s.Events) > MaxEvents+MaxEvents/4 {
			t.Fatalf("event log grew to %d", len(s.Events))
		}
	}
	if len(s.Events) < MaxEvents || s.Events[len(s.Events)-1].Seq != uint64(total) {
		t.Fatalf("events: len %d last %d", len(s.Events), s.Events[len(s.Events)-1].Seq)
	}
	for i := 1; i < len(s.Events); i++ {
		if s.Events[i].Seq != s.Events[i-1].Seq+1 {
			t.Fatalf("gap in the kept events at %d", i)
		}
	}
	if got := s.EventsSince(uint64(total-5), 0); len(got) != 5 {
		t.Fatalf("EventsSince: %d", len(got))
	}
	if got := s.EventsSince(0, 3); len(got) != 3 || got[2].Seq != uint64(total) {
		t.Fatalf("EventsSince limit: %+v", got)
	}
}

// TestSnapshotRoundTripAndDeterminism: two states fed the same commands
// serialise identically, and a snapshot restores to the same state.
func TestSnapshotRoundTripAndDeterminism(t *testing.T) {
	a, b := seed(t), seed(t)
	cmds := []Command{
		&CommitIntents{Generation: 1, Intents: []*Intent{{OpID: "l", Kind: Launch, Fleet: "web", InstanceID: "web-1", ImageDigest: "d1"}}, At: t0},
		&CompleteIntent{OpID: "l", Outcome: Done, At: t0},
		&MarkHealthy{InstanceIDs: []string{"web-1"}},
		&RecordEvents{Events: []Event{{Action: "remediation_blocked", Fleet: "web"}}},
	}
	for _, c := range cmds {
		mustApply(t, a, c)
		mustApply(t, b, c)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Fatal("same commands, different states")
	}
	var buf bytes.Buffer
	if err := a.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	jr, _ := json.Marshal(r)
	if !bytes.Equal(ja, jr) {
		t.Fatalf("snapshot round trip differs:\n%s\n%s", ja, jr)
	}
	if _, err := ReadSnapshot(strings.NewReader(`{"format":99}` + "\n{}")); err == nil {
		t.Fatal("future snapshot format accepted")
	}
}

// The actions of intent events are what operators and tests filter the
// event log on: their values must not change.
func TestIntentEventActions(t *testing.T) {
	for _, tc := range []struct {
		kind    IntentKind
		outcome Outcome
		want    string
	}{
		{Launch, Done, "launched"}, {Launch, Failed, "launch_failed"}, {Launch, Abandoned, "launch_abandoned"},
		{Terminate, Done, "terminated"}, {Terminate, Failed, "terminate_failed"}, {Terminate, Abandoned, "terminate_abandoned"},
		{Launch, "later", "launch_later"}, {Terminate, "later", "terminate_later"},
	} {
		if got := finishedAction(tc.kind, tc.outcome); string(got) != tc.want {
			t.Errorf("%s %s: %q, want %q", tc.kind, tc.outcome, got, tc.want)
		}
	}
	if plannedAction(Launch) != "launch_planned" || plannedAction(Terminate) != "terminate_planned" {
		t.Errorf("planned actions: %q, %q", plannedAction(Launch), plannedAction(Terminate))
	}
}

func TestRecordOfObserved(t *testing.T) {
	o := instance.Observed{ID: "web-x", Fleet: "web", ImageDigest: "d1", TemplateHash: "t1", Address: "127.0.0.1:1", Location: "here",
		ProviderRef: "42", StartedAt: t0, Phase: instance.Running}
	want := Instance{ID: "web-x", Fleet: "web", ImageDigest: "d1", TemplateHash: "t1", Address: "127.0.0.1:1", Location: "here", ProviderRef: "42", CreatedAt: t0}
	if got := RecordOf(o); !reflect.DeepEqual(got, want) {
		t.Errorf("RecordOf: %+v, want %+v", got, want)
	}
}
