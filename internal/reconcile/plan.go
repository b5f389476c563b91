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
)

// Reasons. Launch reasons say why capacity is added; terminate reasons say
// why an instance goes.
const (
	ReasonScaleUp       = "scale_up"
	ReasonReplacement   = "replacement"
	ReasonRollout       = "rollout"
	ReasonExcess        = "excess"
	ReasonUnhealthy     = "unhealthy"
	ReasonNeverHealthy  = "never_healthy"
	ReasonExited        = "exited"
	ReasonGone          = "gone"
	ReasonDriftImage    = "drift_image"
	ReasonDriftTemplate = "drift_template"
	ReasonDriftMutated  = "drift_mutated"
	ReasonOrphan        = "orphan"
	ReasonDrain         = "drain"
)

// Causes that block remediation.
const (
	CauseProviderUnreachable = "provider_unreachable"
	CauseTooManyUnhealthy    = "too_many_unhealthy"
	CauseDisabled            = "disabled"
	CauseUnconfigured        = "unconfigured"
	CauseLaunchBackoff       = "launch_backoff"
	CauseNoImage             = "image_unresolved"
)

// Input is everything Plan looks at.
type Input struct {
	Now    time.Time
	Fleets []FleetInput
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
}

// Action is one step of a plan.
type Action struct {
	Kind       Kind     `json:"kind"`
	Fleet      string   `json:"fleet"`
	InstanceID string   `json:"instance_id,omitempty"` // empty for launches: the executor names them
	Reason     string   `json:"reason"`
	Evidence   []string `json:"evidence,omitempty"`
	// Running is set for terminations of a running instance (a kill), as
	// opposed to cleaning up one that already exited or vanished.
	Running bool `json:"running,omitempty"`
}

// Block says why remediation of a fleet is held back.
type Block struct {
	Cause  string `json:"cause"`
	Detail string `json:"detail"`
}

// FleetStatus is the planner's summary of a fleet.
type FleetStatus struct {
	Fleet        string         `json:"fleet"`
	Desired      int            `json:"desired"`
	States       map[string]int `json:"states"`
	Drifted      map[string]int `json:"drifted"`
	UpToDate     int            `json:"up_to_date"`
	Blocked      []Block        `json:"blocked,omitempty"`
	Unconfigured bool           `json:"unconfigured,omitempty"`
	Draining     bool           `json:"draining,omitempty"`
	// BackoffUntil is set while launches wait after repeated failures.
	BackoffUntil time.Time `json:"backoff_until,omitempty"`
}

// Instance states reported in FleetStatus.States.
var InstanceStates = []string{"healthy", "starting", "unhealthy", "never_healthy", "exited", "launching", "terminating"}

// DriftKinds reported in FleetStatus.Drifted.
var DriftKinds = []string{instance.DriftImage, instance.DriftTemplate, instance.DriftMutated, instance.DriftOrphan}

// Result is a plan: actions plus per-fleet status.
type Result struct {
	Actions []Action      `json:"actions"`
	Fleets  []FleetStatus `json:"fleets"`
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

// Plan decides what to do. It is pure: it reads only its input.
func Plan(in Input) Result {
	var res Result
	for i := range in.Fleets {
		acts, st := planFleet(&in.Fleets[i], in.Now)
		res.Actions = append(res.Actions, acts...)
		res.Fleets = append(res.Fleets, st)
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
	reason   string
	evidence []string
	created  time.Time
}

func planFleet(fi *FleetInput, now time.Time) ([]Action, FleetStatus) {
	d := fi.Desired
	spec := &d.Spec
	st := FleetStatus{Fleet: spec.Name, Desired: spec.Size, States: map[string]int{}, Drifted: map[string]int{},
		Unconfigured: d.Unconfigured, Draining: d.Draining}
	for _, s := range InstanceStates {
		st.States[s] = 0
	}
	for _, k := range DriftKinds {
		st.Drifted[k] = 0
	}
	size := spec.Size
	if d.Draining {
		size = 0
		st.Desired = 0
	}

	var acts []Action
	var cls []*class
	inflight := 0
	for i := range fi.Instances {
		c := classify(&fi.Instances[i], d, &st)
		if c == nil {
			continue
		}
		if c.inst.Open != nil && c.inst.Open.Kind == state.Terminate {
			inflight++
		}
		cls = append(cls, c)
	}

	switch {
	case d.Unconfigured && !d.Draining:
		st.Blocked = append(st.Blocked, Block{CauseUnconfigured, "the fleet is no longer in the fleet files; its instances keep running until `immutd fleet drain " + spec.Name + "`"})
		return nil, st
	case fi.ObserveError != "":
		st.Blocked = append(st.Blocked, Block{CauseProviderUnreachable, fi.ObserveError})
		return nil, st
	case d.ImageDigest == "":
		st.Blocked = append(st.Blocked, Block{CauseNoImage, "no golden image is pinned yet: " + d.ResolveError})
	}

	orphanPolicy := spec.Drift.Orphans
	remediate := spec.Remediation.Enabled || d.Draining
	surge := spec.Rollout.MaxSurge.Resolve(spec.Size, true)
	unavail := spec.Rollout.MaxUnavailable.Resolve(spec.Size, false)

	live, counted, available, sick := 0, 0, 0, 0
	for _, c := range cls {
		if c.live {
			live++
		}
		if c.counted {
			counted++
		}
		if c.available {
			available++
		}
		if c.sick && (c.inst.Open == nil) {
			sick++
		}
	}

	// Clean up instances that already ended or vanished: not a kill.
	for _, c := range cls {
		if c.inst.Open != nil || c.live {
			continue
		}
		if c.inst.Record == nil && orphanPolicy == state.OrphanIgnore {
			continue
		}
		acts = append(acts, Action{Kind: ActTerminate, Fleet: spec.Name, InstanceID: c.inst.ID, Reason: c.reason, Evidence: c.evidence})
	}

	// Decide kills of running instances. A percentage max_unhealthy is of
	// the fleet's size, or of its running instances when there are more (a
	// fleet scaled down to zero can still heal), and at least 1.
	running := 0
	for _, c := range cls {
		if c.inst.Observed != nil && c.inst.Observed.Phase == instance.Running {
			running++
		}
	}
	maxUnhealthy := spec.Remediation.MaxUnhealthy.Resolve(max(spec.Size, running), false)
	if spec.Remediation.MaxUnhealthy.Percent && maxUnhealthy < 1 {
		maxUnhealthy = 1
	}
	blocked := false
	if sick > maxUnhealthy && !d.Draining {
		blocked = true
		st.Blocked = append(st.Blocked, Block{CauseTooManyUnhealthy,
			fmt.Sprintf("%d instances are unhealthy, more than max_unhealthy %d (%s of %d): nothing is terminated until fewer fail or max_unhealthy is raised", sick, maxUnhealthy, spec.Remediation.MaxUnhealthy, spec.Size)})
	}
	slots := spec.Remediation.MaxParallel - inflight
	budget := available - max(size-unavail, 0)
	disabledNeeded := false

	// Candidates in order: sick instances (they serve nothing, so killing
	// them costs no availability), then drifted, outdated and excess ones,
	// which are killed only while they are healthy and the availability
	// budget allows. Instances not judged yet are left alone until probes
	// have a verdict: after a restart nothing is killed on missing data.
	for _, cand := range removalCandidates(cls, size, counted, d.Draining) {
		c := cand.c
		if blocked || slots <= 0 {
			break
		}
		switch cand.reason {
		case ReasonUnhealthy, ReasonNeverHealthy, ReasonDriftMutated, ReasonOrphan:
			if !remediate {
				disabledNeeded = true
				continue
			}
		}
		switch {
		case c.sick:
		case c.available && budget > 0:
			budget--
		default:
			continue
		}
		acts = append(acts, Action{Kind: ActTerminate, Fleet: spec.Name, InstanceID: c.inst.ID, Reason: cand.reason, Evidence: c.evidence, Running: true})
		slots--
	}
	if disabledNeeded {
		st.Blocked = append(st.Blocked, Block{CauseDisabled, "remediation is disabled for this fleet: unhealthy or drifted instances are only reported"})
	}

	// Adopt the orphans this pass does not terminate: adopting changes
	// records, not instances.
	if orphanPolicy == state.OrphanAdopt {
		killed := map[string]bool{}
		for _, a := range acts {
			killed[a.InstanceID] = true
		}
		for _, c := range cls {
			in := c.inst
			if in.Record == nil && in.Open == nil && in.Observed.Phase == instance.Running && !killed[in.ID] {
				acts = append(acts, Action{Kind: ActAdopt, Fleet: spec.Name, InstanceID: in.ID, Reason: ReasonOrphan,
					Evidence: []string{"running instance with the fleet's identity but no record", "image " + in.Observed.ImageDigest}})
			}
		}
	}

	// Launch toward size, never above size + max_surge live instances.
	need := size - counted
	room := size + surge - live
	n := min(need, room)
	if n > 0 && d.ImageDigest != "" {
		if wait := Backoff(fi.Stats.LaunchFailures); wait > 0 && now.Before(fi.Stats.LastFailureAt.Add(wait)) {
			st.BackoffUntil = fi.Stats.LastFailureAt.Add(wait)
			st.Blocked = append(st.Blocked, Block{CauseLaunchBackoff, fmt.Sprintf("%d consecutive instances failed before becoming healthy (last: %s); next launch at %s",
				fi.Stats.LaunchFailures, fi.Stats.LastFailureReason, st.BackoffUntil.UTC().Format(time.RFC3339))})
		} else {
			reason, ev := launchReason(cls, counted, size)
			for i := 0; i < n; i++ {
				acts = append(acts, Action{Kind: ActLaunch, Fleet: spec.Name, Reason: reason, Evidence: ev})
			}
		}
	}
	return acts, st
}

func launchReason(cls []*class, counted, size int) (string, []string) {
	reason := ReasonScaleUp
	for _, c := range cls {
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
	reason string
}

// removalCandidates orders running instances that should go: sick first,
// then mutated, orphans, outdated (oldest first), then the excess of
// up-to-date instances (least healthy, then oldest first).
func removalCandidates(cls []*class, size, counted int, draining bool) []candidate {
	rank := map[string]int{ReasonNeverHealthy: 0, ReasonUnhealthy: 1, ReasonDriftMutated: 2, ReasonOrphan: 3, ReasonDriftTemplate: 4, ReasonDriftImage: 4}
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
			c.evidence = []string{fmt.Sprintf("%d up-to-date instances for size %d", counted, size)}
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

// classify sorts one instance into the planner's categories and counts it
// in the status. It returns nil for orphans the policy ignores.
func classify(in *Inst, d *state.DesiredFleet, st *FleetStatus) *class {
	c := &class{inst: in}
	if in.Record != nil {
		c.created = in.Record.CreatedAt
	} else if in.Observed != nil {
		c.created = in.Observed.StartedAt
	}
	orphan := in.Record == nil && in.Observed != nil && (in.Open == nil || in.Open.Kind != state.Launch)
	if orphan {
		st.Drifted[instance.DriftOrphan]++
		if d.Spec.Drift.Orphans == state.OrphanIgnore {
			return nil
		}
	}

	// Intents in flight.
	if in.Open != nil {
		switch in.Open.Kind {
		case state.Launch:
			c.live, c.counted = true, true
			st.States["launching"]++
		case state.Terminate:
			// Still occupies capacity until it is really gone.
			c.live = in.Observed != nil && in.Observed.Phase == instance.Running
			st.States["terminating"]++
		}
		return c
	}
	if in.Observed == nil {
		// A record the provider no longer lists: the instance is gone.
		c.reason = ReasonGone
		c.evidence = []string{"the provider no longer lists this instance"}
		st.States["exited"]++
		return c
	}
	if in.Observed.Phase != instance.Running {
		c.reason = ReasonExited
		c.evidence = []string{"exited: " + in.Observed.ExitReason}
		st.States["exited"]++
		return c
	}

	c.live = true
	image := in.Observed.ImageDigest
	tmpl := in.Observed.TemplateHash
	switch {
	case orphan && d.Spec.Drift.Orphans == state.OrphanTerminate:
		c.reason = ReasonOrphan
		c.evidence = []string{"no record explains this instance", "drift.orphans = terminate"}
	case d.ImageDigest != "" && image != d.ImageDigest:
		st.Drifted[instance.DriftImage]++
		c.reason = ReasonDriftImage
		c.evidence = []string{"runs image " + image, "desired image " + d.ImageDigest}
	case tmpl != d.TemplateHash:
		st.Drifted[instance.DriftTemplate]++
		c.reason = ReasonDriftTemplate
		c.evidence = []string{"launch template " + tmpl, "desired launch template " + d.TemplateHash}
	}
	if in.Drift != nil {
		st.Drifted[instance.DriftMutated]++
		if c.reason == "" || c.reason == ReasonDriftTemplate || c.reason == ReasonDriftImage {
			c.reason = ReasonDriftMutated
			c.evidence = append([]string(nil), in.Drift.Evidence...)
		}
	}

	switch in.Health {
	case Healthy:
		c.available = true
		st.States["healthy"]++
	case Unhealthy:
		c.sick = true
		c.reason = ReasonUnhealthy
		c.evidence = verdictEvidence(in, "failed its health checks")
		st.States["unhealthy"]++
	case NeverHealthy:
		c.sick = true
		c.reason = ReasonNeverHealthy
		c.evidence = verdictEvidence(in, "never passed its health checks within startup_timeout")
		st.States["never_healthy"]++
	default:
		st.States["starting"]++
	}
	if c.reason == "" {
		c.counted = true
		st.UpToDate++
	}
	return c
}

func verdictEvidence(in *Inst, summary string) []string {
	if len(in.Evidence) > 0 {
		return in.Evidence
	}
	return []string{summary}
}
