// Package reconcile decides and acts. Plan is a pure function from the
// desired state, the observed instances, probe verdicts and the time to a
// list of actions, each with a machine-readable reason and evidence. The
// Executor journals each action as an intent in raft, calls the provider,
// and records the result; it is the only place that calls a provider's
// mutating API.
package reconcile

import (
	"fmt"
	"sort"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/state"
)

// Health is a probe verdict as the planner sees it.
type Health string

const (
	Unknown      Health = ""
	Starting     Health = "starting"
	Healthy      Health = "healthy"
	Unhealthy    Health = "unhealthy"
	NeverHealthy Health = "never_healthy"
)

// Kind is what an action does.
type Kind string

const (
	// ActLaunch launches a new instance from the fleet's golden image.
	ActLaunch Kind = "launch"
	// ActTerminate terminates an instance (or forgets one that is gone).
	ActTerminate Kind = "terminate"
	// ActAdopt records a running instance that no record explains.
	ActAdopt Kind = "adopt"
	// ActAdmit admits a healthy instance to the fleet's traffic backends.
	ActAdmit Kind = "admit"
	// ActQuarantine keeps a running instance that would be killed for a
	// remediation reason for forensics instead: out of traffic and out of
	// the fleet's count, a replacement launched as usual, terminated once
	// the quarantine's TTL has passed.
	ActQuarantine Kind = "quarantine"
	// ActDrain takes an admitted instance out of the fleet's traffic
	// backends before it goes: a later pass terminates it. In a fleet with
	// a traffic gate, an admitted instance is drained, never terminated.
	ActDrain Kind = "drain"
)

// Reason says why an action is taken: launch reasons say why capacity
// is added, terminate reasons why an instance goes. Reasons are journaled
// with intents and events and label metrics: their values are a
// compatibility surface.
type Reason string

// Reasons. The ones the replicated state interprets itself are defined
// there (state cannot import this package).
const (
	ReasonScaleUp       Reason = "scale_up"
	ReasonReplacement   Reason = "replacement"
	ReasonRollout       Reason = "rollout"
	ReasonExcess        Reason = "excess"
	ReasonUnhealthy     Reason = "unhealthy"
	ReasonNeverHealthy  Reason = state.ReasonNeverHealthy
	ReasonExited        Reason = state.ReasonExited
	ReasonGone          Reason = "gone"
	ReasonDriftImage    Reason = "drift_image"
	ReasonDriftTemplate Reason = "drift_template"
	ReasonDriftMutated  Reason = "drift_mutated"
	ReasonOrphan        Reason = state.ReasonOrphan
	ReasonDrain         Reason = "drain"
	// ReasonReady: healthy for the fleet's min_ready (an admission).
	ReasonReady Reason = "ready"
	// ReasonSwitch: a blue-green switch drains the old set.
	ReasonSwitch Reason = "switch"
	// ReasonQuarantineExpired: a quarantined instance's TTL has passed (or
	// its fleet has no quarantine any more).
	ReasonQuarantineExpired Reason = "quarantine_expired"
)

// Cause says why remediation of a fleet is held back. Causes label the
// immutd_remediation_blocked metric and are the reasons of
// remediation_blocked events.
type Cause string

// Causes that block remediation.
const (
	CauseProviderUnreachable Cause = "provider_unreachable"
	CauseTooManyUnhealthy    Cause = "too_many_unhealthy"
	CauseDisabled            Cause = "disabled"
	CauseUnconfigured        Cause = "unconfigured"
	CauseLaunchBackoff       Cause = "launch_backoff"
	CauseNoImage             Cause = "image_unresolved"
	// CauseInstanceLimit: limits.max_instances is reached, so the fleet
	// launches fewer instances than it needs.
	CauseInstanceLimit Cause = "instance_limit"
	// CauseLaunchLimit: limits.max_launches_in_flight launches are in
	// flight already; the rest wait for a later pass. A throttle, not a
	// fault.
	CauseLaunchLimit Cause = "launch_limit"
	// CauseTrafficBackend: a traffic backend of the fleet could not be
	// synced or built; admissions, drains and terminations through it
	// wait. The leader reports it, not the planner.
	CauseTrafficBackend Cause = "traffic_backend"
	// CauseKeepMin: unhealthy instances keep their traffic because fewer
	// than traffic.keep_min admitted instances are healthy (fail open).
	CauseKeepMin Cause = "keep_min"
	// CauseNoQuorum: the cluster cannot commit, so nothing is changed.
	// The agent reports it, not the planner.
	CauseNoQuorum Cause = "no_quorum"
	// CauseRateLimited: the fleet's or the cluster's kill rate is used
	// up; remediation kills wait until the window allows one more.
	CauseRateLimited Cause = "rate_limited"
	// CauseStorm: every running instance of the fleet (or of every
	// fleet) fails at once: an observer problem, so nothing is killed for
	// its health.
	CauseStorm Cause = "storm"
	// CauseStormCooldown: a storm ended less than storm_cooldown ago.
	CauseStormCooldown Cause = "storm_cooldown"
	// CausePaused: an operator's pause holds the fleet: nothing new
	// starts, intents in flight finish.
	CausePaused Cause = "paused"
	// CauseLaunchCapped: remediation.max_launch_failures instances in a
	// row failed before becoming healthy: launches stop until the fleet
	// file changes or an operator retries.
	CauseLaunchCapped Cause = "launch_capped"
)

// Guards that hold an action without blocking the fleet: they are only
// reported with held actions (immutd plan, immutd explain).
const (
	// GuardMaxParallel: max_parallel terminations are in flight.
	GuardMaxParallel Cause = "max_parallel"
	// GuardAvailability: the availability budget (max_unavailable) has
	// no room: the instance goes once a replacement is available.
	GuardAvailability Cause = "availability"
	// GuardReplacementFirst: an unhealthy instance waits for its
	// replacement (surge-first).
	GuardReplacementFirst Cause = "replacement_first"
	// GuardSettling: an unhealthy instance's kill waits for the fleet's
	// settle window (see settleWindow).
	GuardSettling Cause = "settling"
	// Rollout guards: an outdated instance is kept while the rollout is
	// paused, in its canary phase, a blue-green one before it is stable,
	// or while its new version is being recorded.
	GuardRolloutPaused  Cause = "rollout_paused"
	GuardCanary         Cause = "canary"
	GuardBlueGreen      Cause = "blue_green"
	GuardRolloutPending Cause = "rollout_pending"
)

// Causes lists every cause, for the metrics that export one series per
// cause.
var Causes = []Cause{
	CauseProviderUnreachable, CauseTooManyUnhealthy, CauseDisabled,
	CauseUnconfigured, CauseLaunchBackoff, CauseNoImage, CauseNoQuorum,
	CauseInstanceLimit, CauseLaunchLimit, CauseKeepMin, CauseTrafficBackend,
	CauseRateLimited, CauseStorm, CauseStormCooldown, CausePaused, CauseLaunchCapped,
}

// InstanceState is the planner's classification of an instance as status
// shows it (api.Instance.State) and counts it (FleetStatus.States, the
// immutd_fleet_instances metric).
type InstanceState string

// Instance states.
const (
	StateHealthy      InstanceState = "healthy"
	StateStarting     InstanceState = "starting"
	StateUnhealthy    InstanceState = "unhealthy"
	StateNeverHealthy InstanceState = "never_healthy"
	StateExited       InstanceState = "exited"
	// StateGone: the provider no longer lists a recorded instance. It is
	// counted as exited.
	StateGone        InstanceState = "gone"
	StateLaunching   InstanceState = "launching"
	StateTerminating InstanceState = "terminating"
	// StateDraining: a drain intent takes the instance out of traffic.
	StateDraining InstanceState = "draining"
	// StateQuarantined: kept for forensics; not counted toward size.
	StateQuarantined InstanceState = "quarantined"
	// StateUnknown is not the planner's: a follower shows it for the
	// records it has, without the leader's observations.
	StateUnknown InstanceState = "unknown"
)

// InstanceStates are the states FleetStatus.States counts.
var InstanceStates = []InstanceState{StateHealthy, StateStarting, StateUnhealthy, StateNeverHealthy, StateExited, StateLaunching, StateTerminating, StateDraining, StateQuarantined}

// TrafficState is where an instance of a fleet with a traffic gate is
// with its backends ("" in fleets without one).
type TrafficState string

// Traffic states.
const (
	TrafficNone      TrafficState = ""
	TrafficPending   TrafficState = "pending"
	TrafficAdmitting TrafficState = "admitting"
	TrafficAdmitted  TrafficState = "admitted"
	TrafficDraining  TrafficState = "draining"
	TrafficDrained   TrafficState = "drained"
)

// countedAs is the state an instance in s is counted in.
func (s InstanceState) countedAs() InstanceState {
	if s == StateGone {
		return StateExited
	}
	return s
}

// Input is everything Plan looks at.
type Input struct {
	Now    time.Time
	Limits Limits
	Fleets []FleetInput
	// Kills are the times of the latest remediation kills of all fleets
	// (state.State.Kills), for Limits.RemediationRate.
	Kills []time.Time
	// Storm is the last cluster-wide storm as recorded.
	Storm state.Storm
	// Pauses are the operators' pauses (expired ones are ignored).
	Pauses []state.Pause
}

// Limits are the cluster-wide guards over all fleets together. Zero means
// no limit.
type Limits struct {
	// MaxInstances caps live instances (running, launching, terminating
	// while still running) of all fleets.
	MaxInstances int
	// MaxLaunchesInFlight caps open launch intents of all fleets.
	MaxLaunchesInFlight int
	// RemediationRate caps the remediation kills of all fleets; unset
	// means no cap.
	RemediationRate quantity.Rate
}

// FleetInput is one fleet's desired state and what was observed of it.
type FleetInput struct {
	Desired *state.DesiredFleet
	Stats   state.FleetStats
	// ObserveError is set when the provider could not list instances:
	// nothing is launched or terminated for the fleet then.
	ObserveError string
	Instances    []Inst
}

// Inst joins what is known about one instance id.
type Inst struct {
	ID string
	// Record is nil for an orphan.
	Record *state.Instance
	// Observed is nil when the provider does not list the instance.
	Observed *instance.Observed
	// Open is the open intent on the instance, if any.
	Open *state.Intent
	// Health is the probe verdict; Unknown when not judged yet.
	Health   Health
	Evidence []string
	// Drift is an in-place drift finding, nil when clean or not inspected.
	Drift *instance.Finding
	// HealthySince is since when the verdict has been healthy without a
	// break, as the leader saw it (zero when unknown): admission waits
	// for the fleet's min_ready from it, a recovery for healthy_delay.
	// UnhealthySince is since when it has been unhealthy (zero when not):
	// a kill for health waits for the fleet's settle window from it.
	// Failures are the times it turned from healthy to unhealthy, oldest
	// first: the flap detector counts them.
	HealthySince   time.Time
	UnhealthySince time.Time
	Failures       []time.Time

	// flapping and recovering are the planner's (see judgeHistory).
	flapping, recovering bool
}

// Action is one step of a plan.
type Action struct {
	Kind       Kind     `json:"kind"`
	Fleet      string   `json:"fleet"`
	InstanceID string   `json:"instance_id,omitempty"` // empty for launches: the executor names them
	Reason     Reason   `json:"reason"`
	Evidence   []string `json:"evidence,omitempty"`
	// Running is set for terminations of a running instance (a kill), as
	// opposed to cleaning up one that already exited or vanished.
	Running bool `json:"running,omitempty"`
}

// RolloutStatus is a fleet's instances against its target version:
// available on it, failing on it (ids), and running another one.
type RolloutStatus struct {
	Version      int      `json:"version"`
	ImageDigest  string   `json:"image_digest"`
	TemplateHash string   `json:"template_hash"`
	Available    int      `json:"available"`
	Failing      []string `json:"failing,omitempty"`
	Outdated     int      `json:"outdated"`
	// Canary is how many canaries the rollout runs next to the old
	// instances (0 when it is not in a canary phase); ReadySince is since
	// when every available instance of the target has been available.
	Canary     int       `json:"canary,omitempty"`
	ReadySince time.Time `json:"ready_since,omitzero"`
	// BlueGreen: a blue-green rollout runs (Switched: its traffic moved to
	// the new set). Ready counts the target's instances healthy for
	// min_ready (admitted or not), OldAdmitted the other versions'
	// instances still admitted.
	BlueGreen   bool `json:"blue_green,omitempty"`
	Switched    bool `json:"switched,omitempty"`
	Ready       int  `json:"ready,omitempty"`
	OldAdmitted int  `json:"old_admitted,omitempty"`
}

// canaries is how many canaries a fleet's rollout runs now: in a canary
// rollout not promoted (nor paused, reverted), from an earlier version.
func canaries(d *state.DesiredFleet) int {
	c, r := d.Spec.Rollout.Canary, d.Rollout
	if c == nil || r == nil || r.Promoted || d.Revert != nil || len(d.Versions) < 2 {
		return 0
	}
	return max(c.Count.Resolve(d.Spec.Size, true), 1)
}

// strategyPending: the fleet's image or template changed, but the leader
// has not recorded the new version yet (it does in the pass that sees
// it). A canary or blue-green rollout replaces nothing until then, lest
// one pass plan it as a rolling one.
func strategyPending(d *state.DesiredFleet) bool {
	return d.NeedsVersion() && len(d.Versions) > 0 && (d.Spec.Rollout.Canary != nil || d.Spec.Rollout.BlueGreen)
}

// blueGreen says whether a fleet's rollout is a blue-green one in
// progress (from an earlier version, not reverted): the new set runs next
// to the old one, which keeps its slots until the version is stable.
func blueGreen(d *state.DesiredFleet) bool {
	return d.Spec.Rollout.BlueGreen && d.Rollout != nil && d.Revert == nil && len(d.Versions) >= 2
}

// Held is an action the plan would take but a guard holds back.
type Held struct {
	Action
	Guard  Cause  `json:"guard"`
	Detail string `json:"detail,omitempty"`
}

// Block says why remediation of a fleet is held back.
type Block struct {
	Cause  Cause  `json:"cause"`
	Detail string `json:"detail"`
}

// FleetStatus is the planner's summary of a fleet.
type FleetStatus struct {
	Fleet   string `json:"fleet"`
	Desired int    `json:"desired"`
	// States counts the instances by state (every one of InstanceStates
	// is present).
	States       map[InstanceState]int `json:"states"`
	Drifted      map[string]int        `json:"drifted"`
	UpToDate     int                   `json:"up_to_date"`
	Blocked      []Block               `json:"blocked,omitempty"`
	Unconfigured bool                  `json:"unconfigured,omitempty"`
	Draining     bool                  `json:"draining,omitempty"`
	// BackoffUntil is set while launches wait after repeated failures.
	BackoffUntil time.Time `json:"backoff_until,omitempty"`
	// Storm is set while every running instance of the fleet fails at
	// once: the leader records it. Guarded says the guards were judged
	// (not for a fleet nothing is done for, such as one whose provider
	// is unreachable).
	Storm   bool `json:"storm,omitempty"`
	Guarded bool `json:"-"`
	// QuarantineMax is the fleet's quarantine quota (0: no quarantine).
	QuarantineMax int `json:"quarantine_max,omitempty"`
	// Rollout counts the instances by where they are with the target
	// version.
	Rollout RolloutStatus `json:"rollout"`
	// Instances is the classification of every instance of the fleet, by
	// id, orphans the policy ignores included. States counts it.
	Instances map[string]InstanceStatus `json:"-"`
}

// InstanceStatus is the planner's classification of one instance.
type InstanceStatus struct {
	State   InstanceState
	Traffic TrafficState
	// Ignored: an orphan that drift.orphans = "ignore" leaves alone. It
	// is reported as drift only and not counted in States.
	Ignored bool
	// Flapping: it failed flap_threshold times within flap_window and is
	// judged unhealthy; Recovering: healthy again for less than
	// healthy_delay, it counts as starting.
	Flapping, Recovering bool
}

// classified records the state of an instance and counts it.
func (st *FleetStatus) classified(id string, s InstanceState, t TrafficState, ignored bool) {
	st.Instances[id] = InstanceStatus{State: s, Traffic: t, Ignored: ignored}
	if !ignored {
		st.States[s.countedAs()]++
	}
}

// Started counts an intent started after the plan was made (the executor
// applying the plan) as if the plan had seen it open: its instance is
// terminating, or a new instance is launching. Status and metrics show a
// pass with its own work already in flight.
func (st *FleetStatus) Started(it *state.Intent) {
	s, t := StateTerminating, TrafficNone
	switch it.Kind {
	case state.Launch:
		s = StateLaunching
	case state.Drain:
		s, t = StateDraining, TrafficDraining
	}
	old, known := st.Instances[it.InstanceID]
	switch {
	case known && (old.State == StateLaunching || old.State == StateTerminating || old.State == StateDraining):
		return // an intent was open on it already
	case it.Kind == state.Admit:
		if known {
			old.Traffic = TrafficAdmitting
			st.Instances[it.InstanceID] = old
		}
		return // its state does not change
	case known && !old.Ignored:
		st.States[old.State.countedAs()]--
	case !known && it.Kind != state.Launch:
		return // not an instance the plan saw
	}
	if t == TrafficNone && known {
		t = old.Traffic
	}
	st.classified(it.InstanceID, s, t, false)
}

// DriftKinds reported in FleetStatus.Drifted.
var DriftKinds = []string{instance.DriftImage, instance.DriftTemplate, instance.DriftMutated, instance.DriftOrphan}

// Result is a plan: actions plus per-fleet status, and the actions the
// guards hold back.
type Result struct {
	Actions []Action      `json:"actions"`
	Held    []Held        `json:"held,omitempty"`
	Fleets  []FleetStatus `json:"fleets"`
	// Storm is set while every fleet fails at once.
	Storm bool `json:"storm,omitempty"`
}

// Launch backoff after consecutive failed launches of a fleet.
const (
	BackoffBase = time.Second
	BackoffMax  = 5 * time.Minute
)

// Backoff is the wait before the next launch after n consecutive failures.
// The first failure is retried at once.
func Backoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := BackoffBase
	for i := 2; i < n && d < BackoffMax; i++ {
		d *= 2
	}
	if d > BackoffMax {
		d = BackoffMax
	}
	return d
}

// InLaunchStreak says whether a fleet is in a streak of failed launches
// that its backoff governs, also between the waits, while a retry is
// launched and starting: from the second instance in a row that failed
// before it became healthy (the first is retried at once, see Backoff)
// for as long as the fleet, not draining, lacks healthy instances. The
// planner names launch_backoff only during a wait; what reports the
// backoff to operators (events, metrics) uses this, so that a retry is not
// taken for the end of the block.
func InLaunchStreak(st FleetStatus, launchFailures int) bool {
	return Backoff(launchFailures) > 0 && !st.Draining && st.States[StateHealthy] < st.Desired
}

// Plan decides what to do. It is pure: it reads only its input.
//
// Each fleet is planned in steps: tally (classify every instance and
// count), wants (how many launches the fleet needs and has room for),
// then, once the cluster-wide limits have shared the launches out among
// the fleets, cleanup (records of instances that already ended), kills,
// adoptions and launches.
func Plan(in Input) Result {
	fps := make([]*fleetPlan, len(in.Fleets))
	for i := range in.Fleets {
		fps[i] = tally(&in.Fleets[i], in.Now)
		fps[i].pausedBy(in.Pauses, in.Now)
	}
	g := clusterGuards(in, fps)
	for _, fp := range fps {
		if !fp.frozen {
			fp.guard = fp.guardsOf(in, g)
		}
		fp.wants(in.Now)
	}
	allocate(fps, in.Limits)
	res := Result{Storm: g.storm}
	for _, fp := range fps {
		if !fp.frozen {
			fp.now = in.Now
			fp.cleanup()
			fp.kills()
			fp.adoptions()
			fp.launches()
			fp.admissions(in.Now)
			fp.hold()
		}
		res.Actions = append(res.Actions, fp.acts...)
		res.Held = append(res.Held, fp.held...)
		res.Fleets = append(res.Fleets, fp.st)
	}
	return res
}

// class is the planner's classification of one instance.
type class struct {
	inst *Inst
	// live: the instance exists and occupies capacity (running, launching,
	// terminating).
	live bool
	// counted: live, current and not sick: it counts toward size.
	counted bool
	// available: running, healthy and not terminating.
	available bool
	// sick: running and judged unhealthy or never healthy.
	sick bool
	// removal reason for running instances that must go ("" = keep).
	reason   Reason
	evidence []string
	created  time.Time
	// outdated: runs another version than the target, kept because the
	// rollout is paused (or in its canary or blue-green phase), keptFor
	// being the replacement's reason; reverting: runs another version
	// than the one a revert went back to.
	outdated, reverting bool
	keptFor             Reason
	keptEv              []string
	// reported: would go for its health or an in-place change, but
	// remediation only reports it; remedy is why it would go.
	reported bool
	remedy   Reason
	remedyEv []string
	// admitted: in a gated fleet, admitted to traffic (see
	// state.Instance.Admitted); drained: drained and waiting to go.
	admitted, drained bool
	// quarantined: kept for forensics (see ActQuarantine); reason is
	// set once it is to go.
	quarantined bool
}

// fleetPlan is one fleet being planned.
type fleetPlan struct {
	fi   *FleetInput
	d    *state.DesiredFleet
	spec *state.FleetSpec
	st   FleetStatus
	cls  []*class
	acts []Action
	held []Held
	// guard is what the kill-rate and storm guards allow this pass;
	// paused lists the pauses that hold the fleet.
	guard  *guards
	paused []state.Pause
	// rem is the remediation spec with this release's defaults filled in.
	rem state.RemediationSpec
	now time.Time
	// kept are the instances a guard keeps in their slots this pass (see
	// keepSlots): their kill is held and no replacement is made for them.
	kept map[string]held

	size, surge, unavail int
	// frozen: nothing at all is done (unconfigured, provider unreachable).
	frozen bool
	// reported counts instances whose health or drift would have them
	// replaced, kept because remediation is disabled.
	reported int

	// sick counts the failing instances (see class.failing), running
	// the running ones.
	live, counted, available, sick, running int
	// killsInFlight are open terminate intents, launchesOpen open launch
	// intents; free are live instances with no terminate in flight;
	// coming are current instances launching or starting, not judged
	// healthy yet.
	killsInFlight, launchesOpen, free, coming int
	// want is how many launches the fleet needs and has room for, launch
	// how many the cluster-wide limits grant it this pass.
	want, launch int
	// limited: max_instances granted fewer launches than wanted (only a
	// kill makes room; max_launches_in_flight only delays).
	limited bool
	// gated: the fleet has traffic backends; an instance is available
	// only while admitted, and admitted ones are drained before they go.
	// members counts running admitted instances no drain is taking out.
	gated   bool
	members int
	// quarantined counts the fleet's quarantined instances.
	quarantined int
}

// tally classifies every instance of the fleet and counts them.
func tally(fi *FleetInput, now time.Time) *fleetPlan {
	d := fi.Desired
	spec := &d.Spec
	fp := &fleetPlan{fi: fi, d: d, spec: spec, size: spec.Size,
		st: FleetStatus{Fleet: spec.Name, Desired: spec.Size, States: map[InstanceState]int{}, Drifted: map[string]int{},
			Instances:    make(map[string]InstanceStatus, len(fi.Instances)),
			Unconfigured: d.Unconfigured, Draining: d.Draining},
		gated:   spec.Traffic.Gated(),
		surge:   spec.Rollout.MaxSurge.Resolve(spec.Size, true),
		unavail: spec.Rollout.MaxUnavailable.Resolve(spec.Size, false)}
	for _, s := range InstanceStates {
		fp.st.States[s] = 0
	}
	for _, k := range DriftKinds {
		fp.st.Drifted[k] = 0
	}
	fp.sizeAndRollout()
	fp.rem = spec.Remediation.Effective()
	for i := range fi.Instances {
		if c := classify(withHistory(&fi.Instances[i], &fp.rem, now), d, &fp.st, fp.gated, now); c != nil {
			fp.count(c)
		}
	}
	switch {
	case d.Unconfigured && !d.Draining:
		fp.block(CauseUnconfigured, "the fleet is no longer in the fleet files; its instances keep running until `immutd fleet drain "+spec.Name+"`")
		fp.frozen = true
	case fi.ObserveError != "":
		fp.block(CauseProviderUnreachable, fi.ObserveError)
		fp.frozen = true
	case d.Target().ImageDigest == "":
		fp.block(CauseNoImage, "no golden image is pinned yet: "+d.ResolveError)
	}
	return fp
}

// sizeAndRollout sets the size the fleet is planned for (0 while it
// drains, size + canaries in a canary phase) and its rollout status.
func (fp *fleetPlan) sizeAndRollout() {
	d := fp.d
	if d.Draining {
		fp.size = 0
		fp.st.Desired = 0
	}
	if q := fp.spec.Remediation.Quarantine; q != nil {
		fp.st.QuarantineMax = q.Max
	}
	t := d.Target()
	fp.st.Rollout = RolloutStatus{Version: t.Version, ImageDigest: t.ImageDigest, TemplateHash: t.TemplateHash}
	if c := canaries(d); c > 0 && !d.Draining {
		// The canaries run next to the old instances, which keep their
		// slots (classify) until the rollout is promoted.
		fp.st.Rollout.Canary = c
		fp.size += c
	}
	if blueGreen(d) && !d.Draining {
		// So does a blue-green rollout's whole new set, until stable.
		fp.st.Rollout.BlueGreen, fp.st.Rollout.Switched = true, d.Rollout.Switched
		fp.size += d.Spec.Size
	}
}

// count adds a classified instance to the fleet's tallies.
func (fp *fleetPlan) count(c *class) {
	fp.cls = append(fp.cls, c)
	if c.admitted && c.live && c.inst.Open == nil {
		fp.members++
	}
	if c.quarantined {
		fp.quarantined++
	}
	if c.reportOnly() {
		fp.reported++
	}
	if c.live {
		fp.live++
	}
	if c.counted {
		fp.counted++
		if !c.available {
			fp.coming++
		}
	}
	if c.available {
		fp.available++
	}
	// A quarantined instance is out of the fleet, and one a revert
	// replaces goes whatever its health: neither counts toward the
	// breaker, the storm or the rates.
	if c.failing() && !c.quarantined && !c.reverting {
		fp.sick++
	}
	if c.inst.Observed != nil && c.inst.Observed.Phase == instance.Running && !c.quarantined {
		fp.running++
	}
	switch {
	case c.inst.Open != nil && (c.inst.Open.Kind == state.Terminate || c.inst.Open.Kind == state.Drain):
		fp.killsInFlight++
	case c.inst.Open != nil && c.inst.Open.Kind == state.Launch:
		fp.launchesOpen++
		fp.free++
	case c.live:
		fp.free++
	}
}

func (fp *fleetPlan) block(cause Cause, detail string) {
	fp.st.Blocked = append(fp.st.Blocked, Block{Cause: cause, Detail: detail})
}

// wants works out how many instances the fleet should launch: toward
// size, never above size + max_surge live instances, not while launches
// back off after repeated failures.
func (fp *fleetPlan) wants(now time.Time) {
	if fp.frozen || fp.d.Target().ImageDigest == "" {
		return
	}
	fp.keepSlots(now)
	n := min(fp.size-fp.counted-len(fp.kept), fp.size+fp.surge-fp.live)
	if n <= 0 {
		return
	}
	stats := fp.fi.Stats
	if limit := *fp.rem.MaxLaunchFailures; limit > 0 && stats.LaunchFailures >= limit {
		fp.block(CauseLaunchCapped, fmt.Sprintf("%d consecutive instances failed before becoming healthy (last: %s), remediation.max_launch_failures %d: nothing more is launched until the fleet file changes or `immutd fleet retry %s`",
			stats.LaunchFailures, stats.LastFailureReason, limit, fp.spec.Name))
		return
	}
	if wait := Backoff(stats.LaunchFailures); wait > 0 && now.Before(stats.LastFailureAt.Add(wait)) {
		fp.st.BackoffUntil = stats.LastFailureAt.Add(wait)
		fp.block(CauseLaunchBackoff, fmt.Sprintf("%d consecutive instances failed before becoming healthy (last: %s); next launch at %s",
			stats.LaunchFailures, stats.LastFailureReason, fp.st.BackoffUntil.UTC().Format(time.RFC3339)))
		return
	}
	fp.want = n
}

// allocate shares the launches the cluster-wide limits allow among the
// fleets that want some, one at a time in turn, so that one large fleet
// cannot starve the others.
func allocate(fps []*fleetPlan, lim Limits) {
	budget := -1 // unlimited
	live, open := 0, 0
	for _, fp := range fps {
		live += fp.live
		open += fp.launchesOpen
	}
	instanceRoom, launchRoom := -1, -1
	if lim.MaxInstances > 0 {
		instanceRoom = max(lim.MaxInstances-live, 0)
		budget = instanceRoom
	}
	if lim.MaxLaunchesInFlight > 0 {
		launchRoom = max(lim.MaxLaunchesInFlight-open, 0)
		if budget < 0 || launchRoom < budget {
			budget = launchRoom
		}
	}
	if budget < 0 {
		for _, fp := range fps {
			fp.launch = fp.want
		}
		return
	}
	for more := true; more && budget > 0; {
		more = false
		for _, fp := range fps {
			if budget > 0 && fp.launch < fp.want {
				fp.launch++
				budget--
				more = true
			}
		}
	}
	for _, fp := range fps {
		if fp.launch >= fp.want {
			continue
		}
		if instanceRoom >= 0 && instanceRoom <= launchRoom || launchRoom < 0 {
			fp.limited = true
			fp.block(CauseInstanceLimit, fmt.Sprintf("limits.max_instances is %d and %d instances are live in all fleets: %d of the %d launches this fleet needs wait",
				lim.MaxInstances, live, fp.want-fp.launch, fp.want))
		} else {
			fp.block(CauseLaunchLimit, fmt.Sprintf("limits.max_launches_in_flight is %d and %d launches are in flight in all fleets: %d of the %d launches this fleet needs wait for a later pass",
				lim.MaxLaunchesInFlight, open, fp.want-fp.launch, fp.want))
		}
	}
}

// cleanup forgets instances that already ended or vanished (not a
// kill), and terminates quarantined instances whose TTL has passed.
func (fp *fleetPlan) cleanup() {
	for _, c := range fp.cls {
		if c.inst.Open != nil || c.live || c.quarantined && c.reason == "" {
			continue
		}
		if c.quarantined && c.reason == ReasonQuarantineExpired {
			fp.acts = append(fp.acts, Action{Kind: ActTerminate, Fleet: fp.spec.Name, InstanceID: c.inst.ID, Reason: c.reason, Evidence: c.evidence, Running: true})
			continue
		}
		if c.inst.Record == nil && fp.spec.Drift.Orphans == state.OrphanIgnore {
			continue
		}
		kind := ActTerminate
		if c.admitted {
			kind = ActDrain // ended, but backends may still send it requests
		}
		fp.acts = append(fp.acts, Action{Kind: kind, Fleet: fp.spec.Name, InstanceID: c.inst.ID, Reason: c.reason, Evidence: c.evidence})
	}
}

// kills decides which running instances to terminate. Candidates come in
// order: sick instances, then changed-in-place, orphans, outdated and
// excess ones. An instance not judged yet is never killed: after a
// restart nothing is killed on missing data.
//
//   - A healthy instance goes only while the availability budget allows:
//     at least size - max_unavailable healthy instances stay.
//   - An unhealthy instance goes surge-first: a verdict can be wrong, so
//     it stays until its replacement is healthy (enough instances are
//     available without it), unless max_surge leaves no room to launch
//     that replacement first (or the cluster's limits refuse it), when it
//     goes first.
//   - A never-healthy instance goes at once: it never served.
//   - The max_unhealthy breaker stops every kill of a sick instance,
//     except of the instances beyond size + max_surge (a scale-down),
//     which are needed under no verdict.
//
// In a fleet with a traffic gate an admitted instance is drained instead
// (a later pass terminates it once drained), an unhealthy one at once
// rather than surge-first (its kill still waits); an instance that takes no
// traffic (drained, or never admitted) and is judged healthy goes without
// the availability budget, which counts only admitted instances. A sick
// instance is never drained if that leaves fewer than keep_min members
// (admitted instances, whatever their verdict) in the backends: the last
// ones keep their traffic, as a load balancer fails open. keep_min is
// capped at size + max_surge - 1, so that room for a replacement can
// always be made.
func (fp *fleetPlan) kills() {
	spec := fp.spec
	// A percentage max_unhealthy is of the fleet's size, or of its running
	// instances when there are more (a fleet scaled down can still heal),
	// and at least 1.
	base := max(spec.Size, fp.running)
	maxUnhealthy := spec.Remediation.MaxUnhealthy.Resolve(base, false)
	if spec.Remediation.MaxUnhealthy.Percent && maxUnhealthy < 1 {
		maxUnhealthy = 1
	}
	breaker := fp.sick > maxUnhealthy && !fp.d.Draining
	if breaker {
		fp.block(CauseTooManyUnhealthy, fmt.Sprintf("%d instances are unhealthy, more than max_unhealthy %d (%s of %d): nothing is terminated for its health until fewer fail or max_unhealthy is raised",
			fp.sick, maxUnhealthy, spec.Remediation.MaxUnhealthy, base))
	}
	fp.reportHeld()
	fp.rolloutHeld()
	keepMin := 0
	if fp.gated {
		keepMin = min(spec.Traffic.KeepMin, max(fp.size+fp.surge-1, 0))
	}
	// A sick instance whose drain keep_min refuses is held and the choice
	// made again without it, so its slot goes to another candidate. Each
	// round holds one more instance: this ends.
	held := map[string]bool{}
	for {
		k := fp.choose(breaker, keepMin, held)
		if len(k.refused) == 0 {
			fp.acts = append(fp.acts, k.acts...)
			fp.held = append(fp.held, k.held...)
			fp.guard.commit(k.spent)
			break
		}
		for _, id := range k.refused {
			held[id] = true
		}
	}
	if len(held) > 0 {
		fp.block(CauseKeepMin, fmt.Sprintf("%d unhealthy instances keep their traffic: draining them would leave fewer than %d members (traffic.keep_min %d, at most size + max_surge - 1) in the backends",
			len(held), keepMin, spec.Traffic.KeepMin))
		for _, c := range fp.cls {
			if held[c.inst.ID] {
				fp.holdAction(Action{Kind: ActDrain, Fleet: spec.Name, InstanceID: c.inst.ID, Reason: c.reason, Evidence: c.evidence, Running: true}, CauseKeepMin, "")
			}
		}
	}
	fp.guardBlocks()
	fp.switchDrains()
}

// switchDrains is a blue-green switch's second half: once every instance
// of the new set is admitted, every admitted instance of the old set is
// drained in the same pass (no max_parallel: the switch is one step). The
// drained old set keeps running until the version is stable.
func (fp *fleetPlan) switchDrains() {
	rs := fp.st.Rollout
	if !rs.BlueGreen || !rs.Switched {
		return
	}
	admitted := 0
	for _, c := range fp.cls {
		if c.admitted && c.live && !c.outdated && c.reason == "" {
			admitted++
		}
	}
	if admitted < fp.spec.Size {
		return
	}
	for _, c := range fp.cls {
		if c.outdated && c.admitted && c.live && c.inst.Open == nil {
			fp.acts = append(fp.acts, Action{Kind: ActDrain, Fleet: fp.spec.Name, InstanceID: c.inst.ID, Reason: ReasonSwitch, Running: true,
				Evidence: []string{fmt.Sprintf("blue-green switch to version %d: all %d instances of it are admitted", rs.Version, admitted)}})
		}
	}
}

// choice is what choose picked: actions, actions held by a guard, the
// remediation kills spent of the rate, and the sick admitted instances
// keep_min refuses to drain.
type choice struct {
	acts    []Action
	held    []Held
	spent   int
	refused []string
	// quarantines chosen (ActQuarantine) of this pass.
	quarantines int
}

// choose picks the kills (terminations and drains) of a pass, skipping the
// held instances. It returns the sick admitted instances whose drain
// would leave fewer than keepMin members once the other drains it chose
// are counted; the actions are good only when there are none.
func (fp *fleetPlan) choose(breaker bool, keepMin int, held map[string]bool) choice {
	spec := fp.spec
	var k choice
	b := &room{slots: spec.Remediation.MaxParallel - fp.killsInFlight, budget: fp.available - max(fp.size-fp.unavail, 0),
		surplus: fp.free - (fp.size + fp.surge),
		// The replacement of an unhealthy instance comes first when one is
		// launched now or is on its way (launching or starting); with no
		// room to launch one, the unhealthy instance goes first.
		noRoom: fp.size+fp.surge-fp.live <= 0 || fp.limited, replacing: fp.launch > 0 || fp.coming > 0}
	members := fp.members
	var healthDrains []Action
	for _, cand := range removalCandidates(fp.cls, fp.size, fp.counted, fp.d.Draining) {
		c := cand.c
		if held[c.inst.ID] {
			continue
		}
		act := Action{Kind: ActTerminate, Fleet: spec.Name, InstanceID: c.inst.ID, Reason: cand.reason, Evidence: c.evidence, Running: true}
		if c.admitted {
			act.Kind = ActDrain
		}
		forHealth, scaleDown, g, detail := fp.gate(cand, b, breaker)
		// The terminate that follows a drain is the kill the drain began:
		// the rates counted it then.
		remedial := isRemediation(cand.reason) && !c.drained && !scaleDown
		if g == "" {
			g, detail = fp.guard.allows(remedial, forHealth, k.spent)
		}
		if g != "" {
			k.held = append(k.held, Held{Action: act, Guard: g, Detail: detail})
			continue
		}
		if remedial {
			k.spent++
		}
		if act.Kind == ActTerminate && !scaleDown && spec.Remediation.Quarantines(string(cand.reason)) &&
			fp.quarantined+k.quarantines < spec.Remediation.Quarantine.Max {
			act.Kind = ActQuarantine
			k.quarantines++
		}
		b.slots--
		if c.admitted {
			members--
			if forHealth {
				healthDrains = append(healthDrains, act)
				continue
			}
		}
		k.acts = append(k.acts, act)
	}
	kept, refused := keepMembers(healthDrains, members, keepMin)
	k.acts = append(k.acts, kept...)
	k.refused = refused
	return k
}

// room is what a pass may still remove: terminations in flight allowed
// (max_parallel), healthy instances the availability budget can spare,
// instances beyond size + max_surge, and whether a replacement comes
// first.
type room struct {
	slots, budget, surplus int
	noRoom, replacing      bool
}

// gate decides whether a removal candidate may go in this pass, spending
// what it uses of the room: the guard that holds it (with why), or
// whether it goes for its health or as a scale-down.
func (fp *fleetPlan) gate(cand candidate, b *room, breaker bool) (forHealth, scaleDown bool, g Cause, detail string) {
	c := cand.c
	switch {
	case b.slots <= 0:
		return false, false, GuardMaxParallel, fmt.Sprintf("max_parallel %d terminations are in flight or chosen", fp.spec.Remediation.MaxParallel)
	case c.sick && b.surplus > 0:
		// Beyond size + max_surge: no verdict is needed to remove it,
		// and no kill rate holds a scale-down.
		b.surplus--
		return false, true, "", ""
	case c.sick && fp.guard.stops() != "":
		// A storm explains more than the breaker does.
		return false, false, fp.guard.count(fp.guard.stops()), fp.kept[c.inst.ID].detail
	case c.sick && breaker:
		return false, false, CauseTooManyUnhealthy, ""
	case fp.kept[c.inst.ID].guard != "":
		k := fp.kept[c.inst.ID]
		return false, false, fp.guard.count(k.guard), k.detail
	case c.sick:
		// Surge-first: an unhealthy instance waits for its replacement.
		// That holds the kill, not the drain: traffic to a failing
		// instance fails anyway, and a drained instance still runs until
		// its replacement is in.
		if cand.reason == ReasonUnhealthy && b.budget < 0 && (b.replacing || !b.noRoom) && !c.admitted {
			return false, false, GuardReplacementFirst, "an unhealthy instance goes once its replacement is available"
		}
		return true, false, "", ""
	case fp.gated && !c.admitted && c.inst.Health == Healthy:
		b.surplus-- // takes no traffic: removing it costs no availability
	case c.reverting && !c.available:
		b.surplus-- // serves nothing: removing it costs no availability
	case c.available && b.budget > 0:
		b.budget--
		b.surplus--
	default:
		return false, false, GuardAvailability, fmt.Sprintf("goes once %d instances are available without it (size %d - max_unavailable %d)",
			max(fp.size-fp.unavail, 0), fp.size, fp.unavail)
	}
	return false, false, "", ""
}

// keepMembers keeps the drains for health that leave at least keepMin
// members, members being what is left once every drain chosen is done;
// it returns those and the instances of the others.
func keepMembers(drains []Action, members, keepMin int) (kept []Action, refused []string) {
	for _, act := range drains {
		if members < keepMin {
			refused = append(refused, act.InstanceID)
			members++ // held, it stays a member
			continue
		}
		kept = append(kept, act)
	}
	return kept, refused
}

// adoptions records the orphans this pass does not terminate (under the
// adopt policy): adopting changes records, not instances.
func (fp *fleetPlan) adoptions() {
	if fp.spec.Drift.Orphans != state.OrphanAdopt {
		return
	}
	killed := map[string]bool{}
	for _, a := range fp.acts {
		killed[a.InstanceID] = true
	}
	for _, c := range fp.cls {
		in := c.inst
		if in.Record == nil && in.Open == nil && in.Observed.Phase == instance.Running && !killed[in.ID] {
			fp.acts = append(fp.acts, Action{Kind: ActAdopt, Fleet: fp.spec.Name, InstanceID: in.ID, Reason: ReasonOrphan,
				Evidence: []string{"running instance with the fleet's identity but no record", "image " + in.Observed.ImageDigest}})
		}
	}
}

// launches adds the launches the fleet was granted.
func (fp *fleetPlan) launches() {
	if fp.launch <= 0 {
		return
	}
	reason, ev := launchReason(fp.cls, fp.counted, fp.size)
	for i := 0; i < fp.launch; i++ {
		fp.acts = append(fp.acts, Action{Kind: ActLaunch, Fleet: fp.spec.Name, Reason: reason, Evidence: ev})
	}
}

// admissions admits to traffic the instances that stayed healthy for
// min_ready and that nothing is about to remove.
func (fp *fleetPlan) admissions(now time.Time) {
	if !fp.gated {
		return
	}
	minReady := fp.spec.Traffic.MinReady
	// An orphan adopted in this pass has its record before the intents of
	// the pass are committed, so it may be admitted in the same pass.
	acted, adopted := map[string]bool{}, map[string]bool{}
	for _, a := range fp.acts {
		if a.Kind == ActAdopt {
			adopted[a.InstanceID] = true
		} else {
			acted[a.InstanceID] = true
		}
	}
	bg := fp.st.Rollout.BlueGreen
	for _, c := range fp.cls {
		in := c.inst
		if acted[in.ID] || c.admitted || !c.live || in.Open != nil || (in.Record == nil && !adopted[in.ID]) || c.reason != "" || in.Health != Healthy ||
			in.HealthySince.IsZero() || now.Sub(in.HealthySince) < minReady {
			continue
		}
		// Blue-green: the new set waits for the switch, and the old set,
		// once switched away from, is not admitted again.
		if bg && (!fp.st.Rollout.Switched && !c.outdated || fp.st.Rollout.Switched && c.outdated) {
			continue
		}
		fp.acts = append(fp.acts, Action{Kind: ActAdmit, Fleet: fp.spec.Name, InstanceID: in.ID, Reason: ReasonReady,
			Evidence: []string{fmt.Sprintf("healthy since %s, min_ready %s", in.HealthySince.UTC().Format(time.RFC3339), minReady)}})
	}
}

func launchReason(cls []*class, counted, size int) (Reason, []string) {
	reason := ReasonScaleUp
	for _, c := range cls {
		if c.quarantined && reason == ReasonScaleUp {
			reason = ReasonReplacement // a quarantined instance left its slot
		}
		switch c.reason {
		case ReasonDriftImage, ReasonDriftTemplate:
			reason = ReasonRollout
		case "", ReasonExcess:
		default:
			if reason == ReasonScaleUp {
				reason = ReasonReplacement
			}
		}
	}
	return reason, []string{fmt.Sprintf("%d of %d instances are up to date and not failing", counted, size)}
}

type candidate struct {
	c      *class
	reason Reason
}

// removalCandidates orders running instances that should go: sick first,
// then mutated, orphans, outdated (oldest first), then the excess of
// up-to-date instances (least healthy, then oldest first).
func removalCandidates(cls []*class, size, counted int, draining bool) []candidate {
	rank := map[Reason]int{ReasonNeverHealthy: 0, ReasonUnhealthy: 1, ReasonDriftMutated: 2, ReasonOrphan: 3, ReasonDriftTemplate: 4, ReasonDriftImage: 4}
	var out []candidate
	var keep []*class
	for _, c := range cls {
		if !c.live || c.inst.Open != nil {
			continue
		}
		if c.reason != "" {
			out = append(out, candidate{c, c.reason})
		} else if c.counted {
			keep = append(keep, c)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		ri, rj := rank[out[i].reason], rank[out[j].reason]
		if ri != rj {
			return ri < rj
		}
		return olderFirst(out[i].c, out[j].c)
	})
	if excess := counted - size; excess > 0 {
		sort.SliceStable(keep, func(i, j int) bool {
			if keep[i].available != keep[j].available {
				return !keep[i].available
			}
			return olderFirst(keep[i], keep[j])
		})
		reason := ReasonExcess
		if draining {
			reason = ReasonDrain
		}
		for _, c := range keep[:min(excess, len(keep))] {
			c.evidence = []string{fmt.Sprintf("%d instances are up to date, %d more than size %d", counted, counted-size, size)}
			if draining {
				c.evidence = []string{"the fleet is draining: every instance is terminated, one by one"}
			}
			out = append(out, candidate{c, reason})
		}
	}
	return out
}

func olderFirst(a, b *class) bool {
	if !a.created.Equal(b.created) {
		return a.created.Before(b.created)
	}
	return a.inst.ID < b.inst.ID
}

// failing: running and judged unhealthy or never healthy, whether or not
// it is being terminated already. The breaker counts these: "how many
// fail at once" stays true while the first of them goes.
func (c *class) failing() bool {
	in := c.inst
	return in.Observed != nil && in.Observed.Phase == instance.Running && (in.Health == Unhealthy || in.Health == NeverHealthy)
}

// reportOnly says whether the instance would be replaced for its health
// or an in-place change, but is kept because remediation is disabled.
func (c *class) reportOnly() bool { return c.reported }

// stateOf is the state an instance is shown in.
func stateOf(in *Inst) InstanceState {
	open := in.Open
	if open != nil && open.Kind == state.Admit {
		open = nil // an admission does not change the instance's state
	}
	switch {
	case open != nil && open.Kind == state.Launch:
		return StateLaunching
	case open != nil && open.Kind == state.Drain:
		return StateDraining
	case open != nil:
		return StateTerminating
	case in.Observed == nil:
		return StateGone
	case in.Observed.Phase != instance.Running:
		return StateExited
	case in.Record != nil && in.Record.Quarantined:
		return StateQuarantined
	}
	switch in.Health {
	case Healthy:
		return StateHealthy
	case Unhealthy:
		return StateUnhealthy
	case NeverHealthy:
		return StateNeverHealthy
	}
	return StateStarting
}

// classify sorts one instance into the planner's categories and records
// its state in the status. It returns nil for orphans the policy
// ignores: they are not counted in the status either, unless an intent
// on one is in flight (decided under an earlier policy). What remediation
// only reports (remediation.mode, remediation.report) does not make an
// instance go: it keeps counting toward size.
func classify(in *Inst, d *state.DesiredFleet, st *FleetStatus, gated bool, now time.Time) *class {
	c := &class{inst: in}
	traffic := c.trafficOf(gated)
	if in.Record != nil {
		c.created = in.Record.CreatedAt
	} else if in.Observed != nil {
		c.created = in.Observed.StartedAt
	}
	orphan := in.Record == nil && in.Observed != nil && (in.Open == nil || in.Open.Kind != state.Launch)
	ignored := orphan && d.Spec.Drift.Orphans == state.OrphanIgnore
	st.classified(in.ID, stateOf(in), traffic, ignored && in.Open == nil)
	if in.flapping || in.recovering {
		is := st.Instances[in.ID]
		is.Flapping, is.Recovering = in.flapping, in.recovering
		st.Instances[in.ID] = is
	}
	if orphan {
		st.Drifted[instance.DriftOrphan]++
	}
	if ignored {
		return nil
	}

	if in.Record != nil && in.Record.Quarantined && in.Open == nil {
		c.quarantineOf(d, now)
		return c
	}
	if !c.settled(st) {
		return c
	}
	c.running(d, st, gated, orphan)
	var minReady time.Duration
	if gated {
		minReady = d.Spec.Traffic.MinReady
	}
	st.rolloutOf(c, minReady, now)
	return c
}

// settled classifies an instance that has an intent in flight (an
// admission aside), or that is gone or exited; it reports whether the
// instance runs with nothing in flight, to be judged further.
func (c *class) settled(st *FleetStatus) bool {
	in := c.inst
	// Intents in flight. An admission leaves the instance as it is, only
	// not available yet and not a candidate for removal.
	if in.Open != nil && in.Open.Kind != state.Admit {
		switch in.Open.Kind {
		case state.Launch:
			c.live, c.counted = true, true
		case state.Terminate, state.Drain:
			// Still occupies capacity until it is really gone. A blue-green
			// rollout keeps the old set (drained by the switch, for the
			// bake): one of it being drained keeps its slot too.
			c.live = in.Observed != nil && in.Observed.Phase == instance.Running
			c.counted = c.live && in.Open.Kind == state.Drain && st.Rollout.BlueGreen && !onTarget(in, st)
		}
		return false
	}
	switch {
	case in.Observed == nil:
		// A record the provider no longer lists: the instance is gone.
		c.reason, c.evidence = ReasonGone, []string{"the provider no longer lists this instance"}
		return false
	case in.Observed.Phase != instance.Running:
		c.reason, c.evidence = ReasonExited, []string{"exited: " + in.Observed.ExitReason}
		return false
	}
	return true
}

// running classifies a running instance with nothing in flight: whether
// a rollout replaces it, or remediation, or it stays.
func (c *class) running(d *state.DesiredFleet, st *FleetStatus, gated, orphan bool) {
	in := c.inst
	c.live = true
	// What a rollout replaces, and what remediation replaces. A paused
	// rollout replaces nothing: outdated instances keep their slots.
	rollout, rolloutEv := rolloutOf(in.Observed, d, st)
	if rollout != "" && d.Revert == nil && (d.Rollout != nil && (d.Rollout.Paused || st.Rollout.Canary > 0 || st.Rollout.BlueGreen) || strategyPending(d)) {
		c.keptFor, c.keptEv = rollout, rolloutEv
		rollout, rolloutEv, c.outdated = "", nil, true
	}
	remedy, remedyEv := remedyOf(in, d, st, orphan)
	c.available = in.Health == Healthy && (!gated || c.admitted) && in.Open == nil
	switch {
	case rollout != "" && d.Revert != nil:
		// A revert is fast-tracked: an instance of another version goes
		// as a rollout replacement whatever its health, so no breaker,
		// storm or kill rate holds it, and one that is not available goes
		// without the availability budget.
		c.reason, c.evidence, c.reverting = rollout, append(rolloutEv, "the fleet is reverted to version "+fmt.Sprint(d.Revert.To)), true
	case remedy != "" && (d.Draining || !d.Spec.Remediation.Reports(string(remedy))):
		c.reason, c.evidence = remedy, remedyEv
		c.sick = remedy == ReasonUnhealthy || remedy == ReasonNeverHealthy
	case remedy != "":
		// Reported only; a rollout still replaces the instance.
		c.reported, c.remedy, c.remedyEv = true, remedy, remedyEv
		c.reason, c.evidence = rollout, rolloutEv
	default:
		c.reason, c.evidence = rollout, rolloutEv
	}
	if c.reason == "" {
		c.counted = true
		if !c.reported && !c.outdated {
			st.UpToDate++
		}
	}
}

// rolloutOf counts an instance into the fleet's rollout status.
func (st *FleetStatus) rolloutOf(c *class, minReady time.Duration, now time.Time) {
	if c.outdated || c.reason == ReasonDriftImage || c.reason == ReasonDriftTemplate {
		if c.admitted && c.live {
			st.Rollout.OldAdmitted++
		}
	}
	if c.reason == "" && !c.outdated && c.live && c.inst.Health == Healthy && !c.inst.HealthySince.IsZero() && now.Sub(c.inst.HealthySince) >= minReady {
		st.Rollout.Ready++
	}
	if c.outdated {
		st.Rollout.Outdated++
		return
	}
	switch {
	case c.reason == ReasonDriftImage || c.reason == ReasonDriftTemplate:
		st.Rollout.Outdated++
	case c.available && c.reason == "":
		st.Rollout.Available++
		ready := c.inst.HealthySince
		if c.inst.Record != nil && c.inst.Record.AdmittedAt.After(ready) {
			ready = c.inst.Record.AdmittedAt
		}
		if ready.After(st.Rollout.ReadySince) {
			st.Rollout.ReadySince = ready
		}
	case c.sick && (c.reason == ReasonUnhealthy || c.reason == ReasonNeverHealthy) && onTarget(c.inst, st):
		st.Rollout.Failing = append(st.Rollout.Failing, c.inst.ID)
	}
}

func onTarget(in *Inst, st *FleetStatus) bool {
	return in.Observed != nil && in.Observed.ImageDigest == st.Rollout.ImageDigest && in.Observed.TemplateHash == st.Rollout.TemplateHash
}

// withHistory is the instance with flap detection and healthy_delay
// applied to its verdict: a copy when they change it (the input is not
// touched).
func withHistory(in *Inst, r *state.RemediationSpec, now time.Time) *Inst {
	h := judgeHistory(in, r, now)
	if h.Health == in.Health && !h.Flapping {
		return in
	}
	cp := *in
	cp.Health, cp.Evidence = h.Health, h.Evidence
	cp.flapping, cp.recovering = h.Flapping, h.Recovering
	return &cp
}

// quarantineOf classifies a quarantined instance: it is not live (the
// fleet launches a replacement), and it goes once it ended, vanished, or
// its quarantine's TTL passed (or its fleet has none any more).
func (c *class) quarantineOf(d *state.DesiredFleet, now time.Time) {
	in := c.inst
	c.quarantined = true
	q := d.Spec.Remediation.Quarantine
	switch {
	case in.Observed == nil:
		c.reason, c.evidence = ReasonGone, []string{"the provider no longer lists this quarantined instance"}
	case in.Observed.Phase != instance.Running:
		c.reason, c.evidence = ReasonExited, []string{"exited while quarantined: " + in.Observed.ExitReason}
	case q == nil:
		c.reason, c.evidence = ReasonQuarantineExpired, []string{"the fleet has no quarantine any more"}
	case !now.Before(in.Record.QuarantinedAt.Add(q.TTL)):
		c.reason, c.evidence = ReasonQuarantineExpired, []string{fmt.Sprintf("quarantined since %s, ttl %s", stamp(in.Record.QuarantinedAt), q.TTL)}
	}
}

// trafficOf reads the instance's admission from its record (in a gated
// fleet) and returns its traffic state.
func (c *class) trafficOf(gated bool) TrafficState {
	in := c.inst
	if !gated {
		return TrafficNone
	}
	if in.Record != nil {
		c.admitted, c.drained = in.Record.Admitted, in.Record.Drained
	}
	switch {
	case in.Open != nil && in.Open.Kind == state.Drain:
		return TrafficDraining
	case in.Open != nil && in.Open.Kind == state.Admit:
		return TrafficAdmitting
	case c.admitted:
		return TrafficAdmitted
	case c.drained:
		return TrafficDrained
	}
	return TrafficPending
}

// rolloutOf is why a rollout replaces a running instance: it runs
// another image or launch template than desired ("" when current).
func rolloutOf(o *instance.Observed, d *state.DesiredFleet, st *FleetStatus) (Reason, []string) {
	t := d.Target()
	switch {
	case t.ImageDigest != "" && o.ImageDigest != t.ImageDigest:
		st.Drifted[instance.DriftImage]++
		return ReasonDriftImage, []string{"runs image " + o.ImageDigest, "desired image " + t.ImageDigest}
	case o.TemplateHash != t.TemplateHash:
		st.Drifted[instance.DriftTemplate]++
		return ReasonDriftTemplate, []string{"launch template " + o.TemplateHash, "desired launch template " + t.TemplateHash}
	}
	return "", nil
}

// remedyOf is why remediation replaces a running instance: its health
// first, then a change in place, then being an orphan the policy
// terminates ("" when none).
func remedyOf(in *Inst, d *state.DesiredFleet, st *FleetStatus, orphan bool) (Reason, []string) {
	var remedy Reason
	var ev []string
	if orphan && d.Spec.Drift.Orphans == state.OrphanTerminate {
		remedy, ev = ReasonOrphan, []string{"no record explains this instance", "drift.orphans = terminate"}
	}
	if in.Drift != nil {
		st.Drifted[instance.DriftMutated]++
		if remedy == "" {
			remedy, ev = ReasonDriftMutated, append([]string(nil), in.Drift.Evidence...)
		}
	}
	switch in.Health {
	case Unhealthy:
		return ReasonUnhealthy, verdictEvidence(in, "failed its health checks")
	case NeverHealthy:
		return ReasonNeverHealthy, verdictEvidence(in, "never passed its health checks within startup_timeout")
	}
	return remedy, ev
}

func verdictEvidence(in *Inst, summary string) []string {
	if len(in.Evidence) > 0 {
		return in.Evidence
	}
	return []string{summary}
}
