// Package state is immutd's replicated data model: desired fleets by
// generation, instance records, open intents, per-fleet launch-failure
// counters and a bounded event log. Every change is a typed, versioned
// command applied deterministically (no clock reads, no randomness, no
// I/O): the leader puts times and ids into the commands. The cluster
// package replicates commands through raft and applies them here.
package state

import (
	"sort"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// MaxEvents is how many events the replicated log keeps at least; it holds
// at most a quarter more before the oldest are dropped.
const MaxEvents = 2000

// DesiredFleet is one fleet's desired state as committed.
type DesiredFleet struct {
	Spec FleetSpec `json:"spec"`
	// ImageDigest pins the golden image: the local store digest or the
	// docker image id. Instances are judged against it, never against
	// Spec.Image, so a moved tag or an edited bundle cannot leak in.
	ImageDigest  string `json:"image_digest"`
	TemplateHash string `json:"template_hash"`
	// Generation is the desired generation at which this fleet last changed.
	Generation uint64 `json:"generation"`
	// Unconfigured is set when the fleet disappeared from the fleet files.
	// Its instances keep running until it is drained.
	Unconfigured      bool      `json:"unconfigured,omitempty"`
	UnconfiguredSince time.Time `json:"unconfigured_since,omitempty"`
	// Draining scales the fleet to zero; the fleet is forgotten once no
	// instance or intent of it is left.
	Draining bool `json:"draining,omitempty"`
	// ResolveError is set when the image in the fleet file could not be
	// resolved; the fleet stays on ImageDigest (empty for a new fleet).
	ResolveError string `json:"resolve_error,omitempty"`
	// UpdatedAt is when the spec was last committed.
	UpdatedAt time.Time `json:"updated_at"`
	// Versions are the fleet's desired versions, oldest first, at most
	// MaxVersions; Rollout is the rollout to the newest until it is
	// stable; Revert, when set, makes the fleet run an older version.
	// None of them is ever proposed: the state keeps them over a
	// SetDesired, and the leader's RecordVersion and rollout commands
	// change them.
	Versions []Version     `json:"versions,omitempty"`
	Rollout  *RolloutState `json:"rollout,omitempty"`
	Revert   *Revert       `json:"revert,omitempty"`
}

// Instance is the record of an instance immutd launched or adopted.
type Instance struct {
	ID           string    `json:"id"`
	Fleet        string    `json:"fleet"`
	ImageDigest  string    `json:"image_digest"`
	TemplateHash string    `json:"template_hash"`
	Generation   uint64    `json:"generation"`
	Address      string    `json:"address,omitempty"`
	Location     string    `json:"location,omitempty"`
	ProviderRef  string    `json:"provider_ref,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	// LaunchOp is the intent that launched it; empty when adopted.
	LaunchOp string `json:"launch_op,omitempty"`
	// Image is the image reference it was launched from, as the fleet
	// file wrote it (empty when adopted or launched by an older release).
	Image string `json:"image,omitempty"`
	// EverHealthy is set once probes judged it healthy.
	EverHealthy bool `json:"ever_healthy,omitempty"`
	Adopted     bool `json:"adopted,omitempty"`
	// Admitted is set once every traffic backend of the fleet confirmed
	// the instance takes traffic (an admit intent); a drain clears it and sets
	// Drained. Fleets without traffic backends never set either.
	Admitted   bool      `json:"admitted,omitempty"`
	AdmittedAt time.Time `json:"admitted_at,omitempty"`
	// Drained: a drain intent finished, the instance takes no traffic and
	// is waiting to be terminated (or admitted again).
	Drained bool `json:"drained,omitempty"`
	// Quarantined: kept running for forensics instead of being killed,
	// out of traffic and out of the fleet's count, until its quarantine's
	// TTL has passed (see Quarantine).
	Quarantined      bool      `json:"quarantined,omitempty"`
	QuarantinedAt    time.Time `json:"quarantined_at,omitzero"`
	QuarantineReason string    `json:"quarantine_reason,omitempty"`
}

// RecordOf is the record of an instance as the provider observed it:
// what an adoption records. (A launch's record takes its image and
// template from its intent, and the rest from observe.)
func RecordOf(o instance.Observed) Instance {
	r := Instance{ID: o.ID, Fleet: o.Fleet, ImageDigest: o.ImageDigest, TemplateHash: o.TemplateHash}
	r.observe(&o)
	return r
}

// observe copies into the record where the provider runs the instance,
// its handle and, when the provider knows it, when it started.
func (r *Instance) observe(o *instance.Observed) {
	r.Address, r.Location, r.ProviderRef = o.Address, o.Location, o.ProviderRef
	if !o.StartedAt.IsZero() {
		r.CreatedAt = o.StartedAt
	}
}

// IntentKind is the provider verb an intent journals.
type IntentKind string

const (
	Launch    IntentKind = "launch"
	Terminate IntentKind = "terminate"
	// Admit puts a healthy instance into every traffic backend of its
	// fleet; it is admitted once all of them confirmed it.
	Admit IntentKind = "admit"
	// Drain takes an admitted instance out of every traffic backend of
	// its fleet and waits for its connections to end (or drain_delay);
	// it never signals the instance. A terminate follows in a later pass.
	Drain IntentKind = "drain"
)

// Intent is a journaled provider action that is not yet confirmed.
type Intent struct {
	OpID       string     `json:"op_id"`
	Kind       IntentKind `json:"kind"`
	Fleet      string     `json:"fleet"`
	InstanceID string     `json:"instance_id"`
	Reason     string     `json:"reason"`
	Evidence   []string   `json:"evidence,omitempty"`
	// Term is the raft term of the leader that owns the intent; a newer
	// leader claims open intents before re-driving them.
	Term       uint64    `json:"term"`
	Generation uint64    `json:"generation"`
	CreatedAt  time.Time `json:"created_at"`
	Node       string    `json:"node"`
	// Launch parameters, fixed when the intent is committed so a re-driven
	// launch makes exactly the instance that was decided.
	ImageDigest  string `json:"image_digest,omitempty"`
	TemplateHash string `json:"template_hash,omitempty"`
	// Image is the image reference a launch was decided for (the fleet
	// file's, not the pinned digest); traffic steps show it as the
	// instance's version.
	Image string `json:"image,omitempty"`
	// Grace is the stop grace of a terminate.
	Grace time.Duration `json:"grace,omitempty"`
	// Address is where the instance serves, for the traffic backends of
	// an admit, drain or terminate in a fleet with a traffic gate.
	Address string `json:"address,omitempty"`
	// Attempts counts how often a leader started driving it.
	Attempts int `json:"attempts"`
	// RemovedAt is when every traffic backend confirmed that a drain's
	// instance gets no new traffic (see DrainRemoved): the drain_delay
	// runs from it, across leader changes.
	RemovedAt time.Time `json:"removed_at,omitempty"`
}

// Event is one entry of the replicated event log: every launch, kill and
// decision with its reason and evidence.
type Event struct {
	Seq        uint64      `json:"seq"`
	Time       time.Time   `json:"time"`
	Fleet      string      `json:"fleet,omitempty"`
	InstanceID string      `json:"instance,omitempty"`
	Action     EventAction `json:"action"`
	// Reason comes from several vocabularies: the planner's reasons and
	// causes (reconcile.Reason, reconcile.Cause) and the state's own.
	Reason   string   `json:"reason,omitempty"`
	Evidence []string `json:"evidence,omitempty"`
	Node     string   `json:"node,omitempty"`
	OpID     string   `json:"op_id,omitempty"`
}

// EventAction says what an event records. Operators, alerts and tests
// filter the event log on actions: their values are a compatibility
// surface.
type EventAction string

// Event actions.
const (
	// The desired state.
	ActionDesiredChanged    EventAction = "desired_changed"
	ActionFleetUnconfigured EventAction = "fleet_unconfigured"
	ActionDrainStarted      EventAction = "drain_started"
	ActionFleetForgotten    EventAction = "fleet_forgotten"
	// ActionConfigRejected: an agent's fleet files did not load; the last
	// good desired state stays in force.
	ActionConfigRejected EventAction = "config_rejected"
	// ActionConfigAccepted: an agent's fleet files load again after they
	// were rejected.
	ActionConfigAccepted EventAction = "config_accepted"

	// Intents (see plannedAction and finishedAction) and adoptions.
	ActionLaunchPlanned      EventAction = "launch_planned"
	ActionTerminatePlanned   EventAction = "terminate_planned"
	ActionLaunched           EventAction = "launched"
	ActionLaunchFailed       EventAction = "launch_failed"
	ActionLaunchAbandoned    EventAction = "launch_abandoned"
	ActionTerminated         EventAction = "terminated"
	ActionTerminateFailed    EventAction = "terminate_failed"
	ActionTerminateAbandoned EventAction = "terminate_abandoned"
	ActionAdopted            EventAction = "adopted"

	// Traffic: admission to and drains from the fleet's backends.
	ActionAdmitPlanned   EventAction = "admit_planned"
	ActionAdmitted       EventAction = "admitted"
	ActionAdmitFailed    EventAction = "admit_failed"
	ActionAdmitAbandoned EventAction = "admit_abandoned"
	ActionDrainPlanned   EventAction = "drain_planned"
	ActionTrafficRemoved EventAction = "traffic_removed"
	ActionDrained        EventAction = "drained"
	ActionDrainFailed    EventAction = "drain_failed"
	ActionDrainAbandoned EventAction = "drain_abandoned"

	// The leader.
	ActionLeaderReady          EventAction = "leader_ready"
	ActionRemediationBlocked   EventAction = "remediation_blocked"
	ActionRemediationUnblocked EventAction = "remediation_unblocked"
	ActionImageRefMoved        EventAction = "image_ref_moved"

	// Guards: operators' pauses and storms.
	ActionPaused       EventAction = "paused"
	ActionUnpaused     EventAction = "unpaused"
	ActionStormStarted EventAction = "storm_started"
	ActionStormEnded   EventAction = "storm_ended"
	// ActionQuarantined: an instance is kept for forensics instead of
	// being killed.
	ActionQuarantined EventAction = "quarantined"
	// ActionLaunchRetry: an operator cleared a fleet's launch failures.
	ActionLaunchRetry EventAction = "launch_retry"

	// Rollouts and reverts.
	ActionVersionRecorded EventAction = "version_recorded"
	ActionRolloutProgress EventAction = "rollout_progress"
	ActionRolloutComplete EventAction = "rollout_complete"
	ActionRolloutStable   EventAction = "rollout_stable"
	ActionRolloutFailed   EventAction = "rollout_failed"
	ActionRolloutPaused   EventAction = "rollout_paused"
	ActionRolloutResumed  EventAction = "rollout_resumed"
	ActionRolloutPromoted EventAction = "rollout_promoted"
	ActionRolloutSwitched EventAction = "rollout_switched"
	ActionRevertConfirmed EventAction = "revert_confirmed"
	ActionReverted        EventAction = "reverted"
	ActionRevertEnded     EventAction = "revert_ended"
)

// Reasons the state interprets or writes itself. They are values of the
// planner's vocabulary too (reconcile defines its Reason constants of the
// same names from these), kept here because state cannot import reconcile.
const (
	// ReasonNeverHealthy and ReasonExited: terminating an instance that
	// was never healthy for one of these means its launch failed.
	ReasonNeverHealthy = "never_healthy"
	ReasonExited       = "exited"
	// ReasonOrphan is the reason of an adoption.
	ReasonOrphan = "orphan"
	// ReasonLaunchFailed is the LastFailureReason of a launch that failed.
	ReasonLaunchFailed = "launch_failed"
)

// FleetStats are per-fleet counters kept in the replicated state.
type FleetStats struct {
	// LaunchFailures counts consecutive instances of the fleet that failed
	// before ever becoming healthy (launch error, exit, never healthy).
	// It drives the launch backoff and resets when an instance of the
	// current generation becomes healthy.
	LaunchFailures    int       `json:"launch_failures"`
	LastFailureAt     time.Time `json:"last_failure_at,omitempty"`
	LastFailureReason string    `json:"last_failure_reason,omitempty"`
	// Kills are the times of the fleet's latest remediation kills (see
	// RemediationReasons), at most MaxKillLog, oldest first: the kill-rate
	// limits count them.
	Kills []time.Time `json:"kills,omitempty"`
	// Storm is the fleet's last storm: every running instance failing at
	// once, an observer problem rather than an instance problem.
	Storm Storm `json:"storm,omitzero"`
}

// Storm is when a storm began and ended (Active while it lasts).
type Storm struct {
	Active  bool      `json:"active,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	EndedAt time.Time `json:"ended_at,omitzero"`
}

// MaxKillLog bounds the kill times kept per fleet and for the cluster:
// no kill rate may allow more in one window.
const MaxKillLog = 256

// RemediationReasons are the reasons of the kills that the kill-rate
// limits count: an instance terminated (or drained, then terminated) for
// its health or for what happened to it, not for a rollout or a scale
// down, and not the cleanup of one that is gone already.
var RemediationReasons = []string{"unhealthy", ReasonNeverHealthy, "drift_mutated", ReasonOrphan}

// Pause holds a fleet (or, with Fleet empty, every fleet) still: nothing
// new starts, intents in flight finish. Pauses stack: a fleet moves again
// only once every pause on it is removed or expired.
type Pause struct {
	ID     string    `json:"id"`
	Fleet  string    `json:"fleet,omitempty"`
	Reason string    `json:"reason"`
	By     string    `json:"by,omitempty"`
	At     time.Time `json:"at"`
	// Until is when the pause expires by itself (zero: never).
	Until time.Time `json:"until,omitzero"`
}

// Holds says whether the pause holds the fleet at now.
func (p *Pause) Holds(fleet string, now time.Time) bool {
	return (p.Fleet == "" || p.Fleet == fleet) && (p.Until.IsZero() || now.Before(p.Until))
}

// Bounds of pauses.
const (
	MaxPauses      = 64
	MaxPauseReason = 200
)

// State is the whole replicated state. It is not safe for concurrent use;
// the cluster package guards it.
type State struct {
	Generation uint64 `json:"generation"`
	SourceHash string `json:"source_hash"`
	// SourceNode is the node whose fleet files were committed last.
	SourceNode string `json:"source_node,omitempty"`
	// Proposed maps a node id to the hash of the fleet files it last
	// proposed. A node proposes only when its files changed since, so
	// agents whose directories differ never flip-flop the desired state.
	Proposed    map[string]string        `json:"proposed,omitempty"`
	DesiredAt   time.Time                `json:"desired_at"`
	Fleets      map[string]*DesiredFleet `json:"fleets"`
	Instances   map[string]*Instance     `json:"instances"`
	Intents     map[string]*Intent       `json:"intents"`
	Stats       map[string]*FleetStats   `json:"stats"`
	Events      []Event                  `json:"events"`
	NextEventID uint64                   `json:"next_event_id"`
	// Finished counts intents finished by outcome, for audits.
	Finished map[string]uint64 `json:"finished"`
	// Kills are the times of the latest remediation kills of all fleets,
	// at most MaxKillLog, oldest first (the cluster-wide kill rate).
	Kills []time.Time `json:"kills,omitempty"`
	// Storm is the last cluster-wide storm: every fleet failing at once.
	Storm Storm `json:"storm,omitzero"`
	// Pauses are the operators' pauses in force, oldest first.
	Pauses      []Pause `json:"pauses,omitempty"`
	NextPauseID uint64  `json:"next_pause_id,omitempty"`

	// byInstance indexes open intents by instance id (derived, not
	// serialised; rebuilt on demand).
	byInstance map[string]string
}

// New returns an empty state.
func New() *State {
	return &State{
		Fleets:      map[string]*DesiredFleet{},
		Instances:   map[string]*Instance{},
		Intents:     map[string]*Intent{},
		Stats:       map[string]*FleetStats{},
		Finished:    map[string]uint64{},
		Proposed:    map[string]string{},
		NextEventID: 1,
	}
}

// FleetNames returns the names of all fleets in the desired state, sorted.
func (s *State) FleetNames() []string {
	out := make([]string, 0, len(s.Fleets))
	for n := range s.Fleets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// InstancesOf returns the records of a fleet sorted by id.
func (s *State) InstancesOf(fleet string) []*Instance {
	var out []*Instance
	for _, in := range s.Instances {
		if in.Fleet == fleet {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// OpenIntentFor returns the open intent on an instance, if any.
func (s *State) OpenIntentFor(instanceID string) *Intent {
	if op, ok := s.intentIndex()[instanceID]; ok {
		return s.Intents[op]
	}
	return nil
}

// intentIndex returns the instance-to-intent index, building it after a
// restore.
func (s *State) intentIndex() map[string]string {
	if s.byInstance == nil {
		s.byInstance = make(map[string]string, len(s.Intents))
		for op, it := range s.Intents {
			s.byInstance[it.InstanceID] = op
		}
	}
	return s.byInstance
}

// SortedIntents returns the open intents ordered by creation.
func (s *State) SortedIntents() []*Intent {
	out := make([]*Intent, 0, len(s.Intents))
	for _, it := range s.Intents {
		out = append(out, it)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].OpID < out[j].OpID
	})
	return out
}

// EventsSince returns events with Seq > after, oldest first, at most limit
// (0 = all).
func (s *State) EventsSince(after uint64, limit int) []Event {
	i := sort.Search(len(s.Events), func(i int) bool { return s.Events[i].Seq > after })
	out := s.Events[i:]
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return append([]Event(nil), out...)
}

func (s *State) addEvent(e Event) {
	e.Seq = s.NextEventID
	s.NextEventID++
	s.Events = append(s.Events, e)
	// Trim in chunks so that adding an event stays O(1) amortised.
	if len(s.Events) >= MaxEvents+MaxEvents/4 {
		s.Events = append(s.Events[:0:0], s.Events[len(s.Events)-MaxEvents:]...)
	}
}

func (s *State) stats(fleet string) *FleetStats {
	st := s.Stats[fleet]
	if st == nil {
		st = &FleetStats{}
		s.Stats[fleet] = st
	}
	return st
}
