package state

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/analysis"
	"github.com/immutd/immutd/internal/instance"
)

// MaxVersions is how many versions of a fleet the state keeps.
const MaxVersions = 10

// Version outcomes.
const (
	// VersionRolling: its rollout runs (or waits, paused).
	VersionRolling = "rolling"
	// VersionComplete: every instance runs it and is healthy; it bakes.
	VersionComplete = "complete"
	// VersionStable: it completed and stayed healthy for the bake.
	VersionStable = "stable"
	// VersionFailed: its rollout failed (a new instance failed, or no
	// progress within progress_deadline).
	VersionFailed = "failed"
	// VersionReverted: the fleet went back from it to another version.
	VersionReverted = "reverted"
	// VersionSuperseded: another version became desired before it
	// completed.
	VersionSuperseded = "superseded"
	// VersionUnknown: it ran before this release kept versions.
	VersionUnknown = "unknown"
)

// Version is one desired version of a fleet: what its instances are made
// from (the pinned image and the launch template, with the launch
// settings to make them again), when it was rolled out and how that
// ended.
type Version struct {
	N            int             `json:"n"`
	Image        string          `json:"image"`
	ImageDigest  string          `json:"image_digest"`
	TemplateHash string          `json:"template_hash"`
	Launch       instance.Launch `json:"launch"`
	// At is when it became desired; RolledOutAt when every instance ran
	// it healthy; EndedAt when its outcome was last decided.
	At          time.Time `json:"at"`
	RolledOutAt time.Time `json:"rolled_out_at,omitzero"`
	Outcome     string    `json:"outcome"`
	EndedAt     time.Time `json:"ended_at,omitzero"`
	Detail      string    `json:"detail,omitempty"`
}

// RolloutState is the rollout to a fleet's target version, from the
// moment it became desired until it is stable (then it is cleared).
type RolloutState struct {
	Version   int       `json:"version"`
	StartedAt time.Time `json:"started_at"`
	// LastProgressAt is when an instance of the version last became
	// available (the progress deadline runs from it); Available the most
	// of them available so far.
	LastProgressAt time.Time `json:"last_progress_at"`
	Available      int       `json:"available"`
	// CompletedAt is when every instance ran it healthy; the bake runs
	// from it.
	CompletedAt time.Time `json:"completed_at,omitzero"`
	// Promoted: a canary rollout's canaries proved themselves (or an
	// operator said so): the old instances are replaced from now on.
	Promoted bool `json:"promoted,omitempty"`
	// Switched: a blue-green rollout's new set took the traffic (at
	// SwitchedAt); the old set is drained and kept until stable.
	Switched   bool      `json:"switched,omitempty"`
	SwitchedAt time.Time `json:"switched_at,omitzero"`
	// Paused: no outdated instance is replaced (healing goes on); a
	// timed checkpoint's pause ends by itself at PausedUntil.
	Paused      bool      `json:"paused,omitempty"`
	PauseReason string    `json:"pause_reason,omitempty"`
	PausedUntil time.Time `json:"paused_until,omitzero"`
	// Checkpoints counts the rollout's checkpoints reached.
	Checkpoints int `json:"checkpoints,omitempty"`
	// Analysis tallies each metric's measurements (by metric name);
	// MeasuredAt is when the last measurement was taken.
	Analysis   map[string]analysis.Tally `json:"analysis,omitempty"`
	MeasuredAt time.Time                 `json:"measured_at,omitzero"`
}

// Revert makes a fleet run version To instead of its file's version From.
// The fleet file stays the source of truth: the revert holds until the
// file names another version than From (whatever it names then, that is
// what the fleet runs) or an operator resumes the rollout to From.
type Revert struct {
	To     int       `json:"to"`
	From   int       `json:"from"`
	Reason string    `json:"reason"`
	By     string    `json:"by,omitempty"`
	At     time.Time `json:"at"`
	// ConfirmedBy, ConfirmedAt: an operator confirmed the revert (it
	// holds on; status stops calling it an unacknowledged divergence).
	ConfirmedBy string    `json:"confirmed_by,omitempty"`
	ConfirmedAt time.Time `json:"confirmed_at,omitzero"`
}

// Target is what the fleet's instances should be made from: its
// file's version, or the version a revert went back to.
type Target struct {
	Version      int
	Image        string
	ImageDigest  string
	TemplateHash string
	Launch       instance.Launch
}

// Target is the fleet's target version.
func (d *DesiredFleet) Target() Target {
	if d.Revert != nil {
		if v := d.version(d.Revert.To); v != nil {
			return Target{Version: v.N, Image: v.Image, ImageDigest: v.ImageDigest, TemplateHash: v.TemplateHash, Launch: v.Launch}
		}
	}
	t := Target{Image: d.Spec.Image, ImageDigest: d.ImageDigest, TemplateHash: d.TemplateHash, Launch: d.Spec.Launch}
	if v := d.current(); v != nil {
		t.Version = v.N
	}
	return t
}

// LaunchFor is the launch settings of the kept version with this launch
// template hash (the file's when none matches): a launch decided for a
// version is made with that version's settings.
func (d *DesiredFleet) LaunchFor(templateHash string) instance.Launch {
	if t := d.Target(); t.TemplateHash == templateHash {
		return t.Launch
	}
	for i := len(d.Versions) - 1; i >= 0; i-- {
		if d.Versions[i].TemplateHash == templateHash {
			return d.Versions[i].Launch
		}
	}
	return d.Spec.Launch
}

func (d *DesiredFleet) version(n int) *Version {
	for i := range d.Versions {
		if d.Versions[i].N == n {
			return &d.Versions[i]
		}
	}
	return nil
}

// current is the version of the fleet file (the newest kept).
func (d *DesiredFleet) current() *Version {
	if len(d.Versions) == 0 {
		return nil
	}
	return &d.Versions[len(d.Versions)-1]
}

// LastStable is the newest stable version other than n (0 when none): a
// revert's default target.
func (d *DesiredFleet) LastStable(n int) int {
	for i := len(d.Versions) - 1; i >= 0; i-- {
		if v := d.Versions[i]; v.N != n && v.Outcome == VersionStable {
			return v.N
		}
	}
	return 0
}

// NeedsVersion says whether the fleet's pinned image and launch template
// are not its newest version yet (the leader then journals a
// RecordVersion).
func (d *DesiredFleet) NeedsVersion() bool {
	if d.ImageDigest == "" || d.Unconfigured || d.Draining {
		return false
	}
	cur := d.current()
	return cur == nil || cur.ImageDigest != d.ImageDigest || cur.TemplateHash != d.TemplateHash
}

// recordVersion appends a fleet's new version and starts its rollout; a
// revert ends, because the fleet file now names another version than
// the one it came from (whatever it names, that is what the fleet runs).
func (s *State) recordVersion(c *RecordVersion) Result {
	f := s.Fleets[c.Fleet]
	if f == nil || f.ImageDigest != c.ImageDigest || f.TemplateHash != c.TemplateHash || !f.NeedsVersion() {
		return Result{Generation: s.Generation} // stale or done already
	}
	nf := *f
	vs := append([]Version(nil), f.Versions...)
	if n := len(vs); n > 0 && (vs[n-1].Outcome == VersionRolling || vs[n-1].Outcome == VersionComplete) {
		vs[n-1].Outcome, vs[n-1].EndedAt, vs[n-1].Detail = VersionSuperseded, c.At, "another version became desired before it was stable"
	}
	n := 1
	if len(vs) > 0 {
		n = vs[len(vs)-1].N + 1
	}
	vs = append(vs, Version{N: n, Image: f.Spec.Image, ImageDigest: f.ImageDigest, TemplateHash: f.TemplateHash, Launch: f.Spec.Launch, At: c.At, Outcome: VersionRolling})
	if len(vs) > MaxVersions {
		vs = vs[len(vs)-MaxVersions:]
	}
	nf.Versions = vs
	nf.Rollout = &RolloutState{Version: n, StartedAt: c.At, LastProgressAt: c.At}
	s.addEvent(Event{Time: c.At, Fleet: c.Fleet, Action: ActionVersionRecorded, Reason: "rollout_started", Node: c.Node,
		Evidence: []string{fmt.Sprintf("version %d", n), "image " + f.Spec.Image, "digest " + f.ImageDigest, "launch template " + f.TemplateHash}})
	if r := f.Revert; r != nil {
		s.addEvent(Event{Time: c.At, Fleet: c.Fleet, Action: ActionRevertEnded, Reason: "file_changed", Node: c.Node,
			Evidence: []string{fmt.Sprintf("the fleet file names version %d now; the revert to version %d from %d ends", n, r.To, r.From)}})
		nf.Revert = nil
	}
	s.Fleets[c.Fleet] = &nf
	return Result{Generation: s.Generation}
}

// Rollout steps (RolloutStep.Step): the leader's observations, then
// operators' controls.
const (
	StepProgress = "progress"
	StepComplete = "complete"
	StepStable   = "stable"
	StepFailed   = "failed"
	StepPause    = "pause"
	StepResume   = "resume"
	StepRevert   = "revert"
	StepAbort    = "abort"
	StepPromote  = "promote"
	StepMeasure  = "measure"
	StepSwitch   = "switch"
	// StepCheckpoint: the rollout reached its next checkpoint and pauses.
	StepCheckpoint = "checkpoint"
	// StepConfirm: an operator confirms a revert.
	StepConfirm = "confirm"
)

// Rollout failure policies (RolloutSpec.OnFailure).
const (
	OnFailurePause  = "pause"
	OnFailureRevert = "revert"
)

// RolloutStep moves a fleet's rollout: the leader's observations
// (progress, complete, stable, failed) about version Of, and operators'
// controls (pause, resume, revert to To or the last stable version,
// abort).
type RolloutStep struct {
	Fleet string `json:"fleet"`
	Step  string `json:"step"`
	// Of is the version the observation is about.
	Of int `json:"version,omitempty"`
	// Available is the instances of version Of available (progress).
	Available int `json:"available,omitempty"`
	// Measurements are one round of the analysis (measure), by metric.
	Measurements []Measurement `json:"measurements,omitempty"`
	To           int           `json:"to,omitempty"`
	Detail       string        `json:"detail,omitempty"`
	By           string        `json:"by,omitempty"`
	At           time.Time     `json:"at"`
	Node         string        `json:"node"`
}

func (*RolloutStep) Type() CommandType { return TypeRolloutStep }
func (*RolloutStep) Version() uint8    { return 1 }

// rolloutStep applies a RolloutStep on a copy of the fleet (desired
// fleets are replaced, never changed in place).
func (s *State) rolloutStep(c *RolloutStep) Result {
	f := s.Fleets[c.Fleet]
	if f == nil {
		return Result{Err: fmt.Sprintf("fleet %q is not known", c.Fleet), Generation: s.Generation}
	}
	nf := *f
	nf.Versions = append([]Version(nil), f.Versions...)
	if f.Rollout != nil {
		r := *f.Rollout
		nf.Rollout = &r
	}
	var err string
	switch c.Step {
	case StepProgress, StepComplete, StepStable, StepFailed:
		err = s.observeRollout(&nf, c)
	case StepMeasure:
		err = s.measure(&nf, c)
	case StepPause, StepResume:
		err = s.pauseRollout(&nf, c)
	case StepRevert, StepAbort:
		err = s.revert(&nf, c)
	case StepPromote:
		err = s.promote(&nf, c)
	case StepSwitch:
		err = s.switchTraffic(&nf, c)
	case StepCheckpoint:
		err = s.checkpoint(&nf, c)
	case StepConfirm:
		err = s.confirm(&nf, c)
	default:
		err = fmt.Sprintf("unknown rollout step %q", c.Step)
	}
	if err != "" {
		return Result{Err: err, Generation: s.Generation}
	}
	s.Fleets[c.Fleet] = &nf
	return Result{Generation: s.Generation}
}

// observeRollout applies the leader's observation of the rollout to
// c.Of; one about another rollout is stale and changes nothing.
func (s *State) observeRollout(f *DesiredFleet, c *RolloutStep) string {
	r, v := f.Rollout, f.version(c.Of)
	if r == nil || r.Version != c.Of || v == nil || f.Revert != nil {
		return ""
	}
	ev := Event{Time: c.At, Fleet: f.Spec.Name, Reason: c.Step, Node: c.Node, Evidence: []string{fmt.Sprintf("version %d", v.N)}}
	switch c.Step {
	case StepProgress:
		if c.Available <= r.Available {
			return ""
		}
		r.Available, r.LastProgressAt = c.Available, c.At
		ev.Action = ActionRolloutProgress
		ev.Evidence = append(ev.Evidence, fmt.Sprintf("%d instances of it available", c.Available))
	case StepComplete:
		if !r.CompletedAt.IsZero() {
			return ""
		}
		r.CompletedAt, v.RolledOutAt = c.At, c.At
		if v.Outcome != VersionStable {
			v.Outcome = VersionComplete
		}
		ev.Action = ActionRolloutComplete
		ev.Evidence = append(ev.Evidence, "every instance runs it and is healthy; it bakes now")
	case StepStable:
		v.Outcome, v.EndedAt = VersionStable, c.At
		f.Rollout = nil
		ev.Action = ActionRolloutStable
		ev.Evidence = append(ev.Evidence, "completed and stayed healthy for the bake")
	case StepFailed:
		v.Outcome, v.EndedAt, v.Detail = VersionFailed, c.At, c.Detail
		ev.Action = ActionRolloutFailed
		ev.Evidence = append(ev.Evidence, c.Detail)
		s.addEvent(ev)
		s.onFailure(f, c)
		return ""
	}
	s.addEvent(ev)
	return ""
}

// onFailure applies the fleet's rollout.on_failure to a failed rollout:
// revert to the last stable version (fast-tracked: the planner replaces
// the failed version's instances at once, within the usual bounds), or
// pause, which is also what revert falls back to without a stable one.
func (s *State) onFailure(f *DesiredFleet, c *RolloutStep) {
	if f.Spec.Rollout.OnFailure == OnFailureRevert {
		if to := f.LastStable(c.Of); to != 0 {
			f.Revert = &Revert{To: to, From: c.Of, Reason: "rollout failed: " + c.Detail, At: c.At}
			f.Rollout = nil
			s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionReverted, Reason: "auto_revert", Node: c.Node,
				Evidence: []string{fmt.Sprintf("back to version %d (the last stable) from %d", to, c.Of), c.Detail}})
			return
		}
		c.Detail += "; no stable version to revert to"
	}
	f.Rollout.Paused, f.Rollout.PauseReason = true, "failed: "+c.Detail
	s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRolloutPaused, Reason: "on_failure", Node: c.Node,
		Evidence: []string{"no outdated instance is replaced until `immutd rollout resume`", c.Detail}})
}

// pauseRollout pauses or resumes a rollout. Resuming a reverted fleet
// rolls it to its file's version again.
func (s *State) pauseRollout(f *DesiredFleet, c *RolloutStep) string {
	cur := f.current()
	switch {
	case c.Step == StepPause && f.Rollout == nil:
		return "no rollout is in progress"
	case c.Step == StepPause:
		if f.Rollout.Paused {
			return ""
		}
		f.Rollout.Paused, f.Rollout.PauseReason = true, c.Detail
		reason := "operator"
		if c.By == "" && c.Of != 0 {
			reason = "analysis_inconclusive" // the leader's
		}
		s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRolloutPaused, Reason: reason, Node: c.Node, Evidence: byWhom(c, "reason: "+c.Detail)})
		return ""
	case cur == nil:
		return "the fleet has no version yet"
	case f.Revert == nil && (f.Rollout == nil || !f.Rollout.Paused):
		return "no rollout is paused and no revert is in force"
	}
	if r := f.Rollout; f.Revert == nil && r.Version == cur.N && cur.Outcome != VersionFailed {
		// A pause (an operator's, a checkpoint's, an inconclusive
		// analysis's) ends where the rollout stood, with a fresh deadline
		// and fresh measurements.
		r.Paused, r.PauseReason, r.PausedUntil, r.LastProgressAt = false, "", time.Time{}, c.At
		r.Analysis, r.MeasuredAt = nil, time.Time{}
		reason := "operator"
		if c.By == "" && c.Of != 0 {
			reason = "checkpoint_pause" // the leader's, at the end of a timed checkpoint
		}
		s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRolloutResumed, Reason: reason, Node: c.Node, Evidence: byWhom(c, fmt.Sprintf("version %d", cur.N))})
		return ""
	}
	if f.Revert != nil {
		s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRevertEnded, Reason: "operator", Node: c.Node,
			Evidence: byWhom(c, fmt.Sprintf("the fleet rolls to its file's version %d again", cur.N))})
		f.Revert = nil
	}
	if cur.Outcome != VersionStable { // a stable version keeps what it proved
		cur.Outcome, cur.EndedAt, cur.Detail = VersionRolling, time.Time{}, ""
	}
	f.Rollout = &RolloutState{Version: cur.N, StartedAt: c.At, LastProgressAt: c.At}
	s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRolloutResumed, Reason: "operator", Node: c.Node, Evidence: byWhom(c, fmt.Sprintf("version %d", cur.N))})
	return ""
}

// revert makes the fleet run an older stable version (c.To, or the last
// stable one) instead of its file's; abort is a revert of a rollout in
// progress.
func (s *State) revert(f *DesiredFleet, c *RolloutStep) string {
	cur := f.current()
	if cur == nil {
		return "the fleet has no version yet"
	}
	if c.Step == StepAbort && f.Rollout == nil {
		return "no rollout is in progress: use revert to go back from a completed one"
	}
	from := f.Target().Version
	to := c.To
	if to == 0 {
		to = f.LastStable(from)
	}
	v := f.version(to)
	switch {
	case to == 0:
		return fmt.Sprintf("no stable version to revert to (versions kept: %s)", versionList(f.Versions))
	case v == nil:
		return fmt.Sprintf("version %d is not kept (versions kept: %s)", to, versionList(f.Versions))
	case to == from:
		return fmt.Sprintf("the fleet runs version %d already", to)
	case v.Outcome != VersionStable:
		return fmt.Sprintf("version %d is %s, not stable: immutd reverts only to a version whose rollout completed and baked healthy", to, v.Outcome)
	}
	if f.Rollout != nil {
		if rv := f.version(f.Rollout.Version); rv != nil {
			rv.Outcome, rv.EndedAt, rv.Detail = VersionReverted, c.At, c.Step+" by an operator"
		}
		f.Rollout = nil
	}
	reason := c.Detail
	if reason == "" {
		reason = c.Step + " by an operator"
	}
	f.Revert = &Revert{To: to, From: cur.N, Reason: reason, By: c.By, At: c.At}
	s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionReverted, Reason: c.Step, Node: c.Node,
		Evidence: byWhom(c, fmt.Sprintf("back to version %d from %d", to, from), reason)})
	return ""
}

// confirm records an operator's confirmation of a revert: the fleet goes
// on running the reverted-to version (the rule that ends a revert is
// unchanged), and it is no longer reported as an unacknowledged
// divergence from the file.
func (s *State) confirm(f *DesiredFleet, c *RolloutStep) string {
	if f.Revert == nil {
		return "no revert is in force"
	}
	rv := *f.Revert
	rv.ConfirmedBy, rv.ConfirmedAt = c.By, c.At
	if rv.ConfirmedBy == "" {
		rv.ConfirmedBy = "an operator"
	}
	f.Revert = &rv
	s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRevertConfirmed, Reason: "operator", Node: c.Node,
		Evidence: byWhom(c, fmt.Sprintf("runs version %d instead of the file's version %d, confirmed", rv.To, rv.From))})
	return ""
}

// checkpoint pauses a rollout at its next checkpoint: for the fleet's
// checkpoint_pause, or until an operator resumes it.
func (s *State) checkpoint(f *DesiredFleet, c *RolloutStep) string {
	r, cps := f.Rollout, f.Spec.Rollout.Checkpoints
	if r == nil || r.Version != c.Of || f.Revert != nil || r.Paused || r.Checkpoints >= len(cps) {
		return "" // stale
	}
	cp := cps[r.Checkpoints]
	r.Checkpoints++
	r.Paused, r.PauseReason = true, "checkpoint "+cp.String()+": "+c.Detail
	ev := []string{fmt.Sprintf("version %d: %s", r.Version, c.Detail)}
	if p := f.Spec.Rollout.CheckpointPause; p > 0 {
		r.PausedUntil = c.At.Add(p)
		ev = append(ev, "resumes by itself at "+r.PausedUntil.UTC().Format(time.RFC3339))
	} else {
		ev = append(ev, "resumes with `immutd rollout resume "+f.Spec.Name+"`")
	}
	s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRolloutPaused, Reason: "checkpoint", Node: c.Node, Evidence: ev})
	return ""
}

// switchTraffic marks a blue-green rollout switched: its new set takes
// the traffic, the old one is drained and kept until stable.
func (s *State) switchTraffic(f *DesiredFleet, c *RolloutStep) string {
	r := f.Rollout
	switch {
	case !f.Spec.Rollout.BlueGreen:
		return "the fleet's rollout strategy is not blue_green"
	case r == nil || f.Revert != nil || r.Version != c.Of:
		return "" // stale
	case r.Switched:
		return ""
	}
	r.Switched, r.SwitchedAt = true, c.At
	s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRolloutSwitched, Reason: "blue_green", Node: c.Node,
		Evidence: []string{fmt.Sprintf("version %d: its whole set is ready; traffic moves to it and the old set is drained and kept for the bake", r.Version), c.Detail}})
	return ""
}

// Measurement is one metric's measurement of an analysis round.
type Measurement struct {
	Metric string         `json:"metric"`
	Phase  analysis.Phase `json:"phase"`
	Detail string         `json:"detail,omitempty"`
}

// measure adds an analysis round to the rollout's tallies (of the
// analysis's metrics only).
func (s *State) measure(f *DesiredFleet, c *RolloutStep) string {
	r, a := f.Rollout, f.Spec.Rollout.Analysis
	if r == nil || r.Version != c.Of || a == nil {
		return "" // stale
	}
	tallies := make(map[string]analysis.Tally, len(a.Metrics))
	maps.Copy(tallies, r.Analysis)
	for _, m := range c.Measurements {
		if slices.ContainsFunc(a.Metrics, func(am AnalysisMetric) bool { return am.Name == m.Metric }) {
			tallies[m.Metric] = tallies[m.Metric].Add(m.Phase, m.Detail)
		}
	}
	r.Analysis, r.MeasuredAt = tallies, c.At
	return ""
}

// promote ends a canary rollout's canary phase: the old instances are
// replaced from now on.
func (s *State) promote(f *DesiredFleet, c *RolloutStep) string {
	r := f.Rollout
	switch {
	case f.Spec.Rollout.Canary == nil:
		return "the fleet's rollout strategy is rolling: there are no canaries to promote"
	case r == nil || f.Revert != nil:
		return "no rollout is in progress"
	case r.Promoted:
		return fmt.Sprintf("the rollout to version %d is promoted already", r.Version)
	case c.Of != 0 && c.Of != r.Version:
		return "" // the leader's, about an older rollout: stale
	}
	r.Promoted = true
	reason := "operator"
	if c.By == "" && c.Detail != "" {
		reason = "promote_after"
	}
	s.addEvent(Event{Time: c.At, Fleet: f.Spec.Name, Action: ActionRolloutPromoted, Reason: reason, Node: c.Node,
		Evidence: byWhom(c, fmt.Sprintf("version %d: the old instances are replaced from now on", r.Version), c.Detail)})
	return ""
}

func byWhom(c *RolloutStep, ev ...string) []string {
	if c.By != "" {
		ev = append(ev, "by "+c.By)
	}
	return ev
}

func versionList(vs []Version) string {
	if len(vs) == 0 {
		return "none"
	}
	var out []string
	for _, v := range vs {
		out = append(out, fmt.Sprintf("%d %s", v.N, v.Outcome))
	}
	return strings.Join(out, ", ")
}
