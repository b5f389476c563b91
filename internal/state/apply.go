package state

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"time"
)

// Result is what applying a command returns to its proposer. Domain
// rejections are results, not panics: the entry is committed either way.
type Result struct {
	// Err is set when the command as a whole was rejected.
	Err string `json:"err,omitempty"`
	// Generation is the desired generation after the command.
	Generation uint64 `json:"generation"`
	// Accepted lists accepted op ids (CommitIntents, ClaimIntents).
	Accepted []string `json:"accepted,omitempty"`
	// Rejected maps op id to the reason it was rejected.
	Rejected map[string]string `json:"rejected,omitempty"`
	// Changed lists fleets whose desired state changed (SetDesired).
	Changed []string `json:"changed,omitempty"`
}

// Error returns the rejection as an error, or nil.
func (r Result) Error() error {
	if r.Err == "" {
		return nil
	}
	return fmt.Errorf("%s", r.Err)
}

// Apply applies one decoded command. It is deterministic. A command
// that decodes but is malformed (a null where a fleet, intent or
// instance belongs) changes nothing for the null: raft's log is only
// written by an authenticated leader, but a state machine that panics
// on an entry stops every node that replays it.
func (s *State) Apply(c Command) Result {
	switch c := c.(type) {
	case *SetDesired:
		c.Fleets = dropNil(c.Fleets)
	case *CommitIntents:
		c.Intents = dropNil(c.Intents)
	case *Adopt:
		c.Instances = dropNil(c.Instances)
	}
	switch c := c.(type) {
	case *SetDesired:
		return s.setDesired(c)
	case *CommitIntents:
		return s.commitIntents(c)
	case *CompleteIntent:
		return s.completeIntent(c)
	case *ClaimIntents:
		return s.claimIntents(c)
	case *Adopt:
		return s.adopt(c)
	case *MarkHealthy:
		return s.markHealthy(c)
	case *DrainFleet:
		return s.drainFleet(c)
	case *DrainRemoved:
		return s.drainRemoved(c)
	case *AddPause:
		return s.addPause(c)
	case *Unpause:
		return s.unpause(c)
	case *Quarantine:
		return s.quarantine(c)
	case *RetryFleet:
		return s.retryFleet(c)
	case *RecordVersion:
		return s.recordVersion(c)
	case *RolloutStep:
		return s.rolloutStep(c)
	case *RecordStorms:
		return s.recordStorms(c)
	case *RecordEvents:
		for _, e := range c.Events {
			s.addEvent(e)
		}
		return Result{Generation: s.Generation}
	default:
		panic(fmt.Sprintf("state: apply: unhandled command %T", c))
	}
}

func (s *State) setDesired(c *SetDesired) Result {
	if c.BaseGeneration != s.Generation {
		return Result{Err: fmt.Sprintf("desired state moved: base generation %d, current %d", c.BaseGeneration, s.Generation), Generation: s.Generation}
	}
	next := s.Generation + 1
	var changed []string
	seen := map[string]bool{}
	for _, f := range c.Fleets {
		name := f.Spec.Name
		seen[name] = true
		old := s.Fleets[name]
		if old != nil && !old.Unconfigured && !old.Draining &&
			old.ImageDigest == f.ImageDigest && old.TemplateHash == f.TemplateHash &&
			old.ResolveError == f.ResolveError && reflect.DeepEqual(old.Spec, f.Spec) {
			continue
		}
		nf := *f
		nf.Generation = next
		nf.UpdatedAt = c.At
		if old != nil {
			// Kept by the state, never proposed (see RecordVersion).
			nf.Versions, nf.Rollout, nf.Revert = old.Versions, old.Rollout, old.Revert
		}
		if st := s.Stats[name]; st != nil && old != nil && (old.ImageDigest != f.ImageDigest || !reflect.DeepEqual(old.Spec, f.Spec)) {
			// A changed fleet file is a fresh start for the launch
			// backoff and its cap.
			st.LaunchFailures = 0
		}
		nf.Unconfigured, nf.Draining = false, false
		nf.UnconfiguredSince = time.Time{}
		s.Fleets[name] = &nf
		changed = append(changed, name)
		if !nf.Spec.Traffic.Gated() {
			s.ungate(name)
		}
		ev := Event{Time: c.At, Fleet: name, Action: ActionDesiredChanged, Node: c.Node,
			Evidence: []string{fmt.Sprintf("generation %d", next), "image " + f.Spec.Image, "digest " + f.ImageDigest, "size " + fmt.Sprint(f.Spec.Size)}}
		if old == nil {
			ev.Reason = "fleet_added"
		} else if old.Unconfigured {
			ev.Reason = "fleet_configured_again"
		} else if old.ImageDigest != f.ImageDigest {
			ev.Reason = "image_changed"
			ev.Evidence = append(ev.Evidence, "previous digest "+old.ImageDigest)
		} else {
			ev.Reason = "spec_changed"
		}
		if f.ResolveError != "" {
			ev.Evidence = append(ev.Evidence, "image not resolved: "+f.ResolveError)
		}
		s.addEvent(ev)
	}
	for _, name := range s.FleetNames() {
		f := s.Fleets[name]
		if seen[name] || f.Unconfigured {
			continue
		}
		nf := *f
		nf.Unconfigured = true
		nf.UnconfiguredSince = c.At
		nf.Generation = next
		reason := "removed_from_files_kept_running"
		if c.AutoDrain {
			nf.Draining = true
			reason = "removed_from_files_auto_drain"
		}
		s.Fleets[name] = &nf
		changed = append(changed, name)
		s.addEvent(Event{Time: c.At, Fleet: name, Action: ActionFleetUnconfigured, Reason: reason, Node: c.Node})
	}
	if c.ProposerID != "" {
		s.Proposed[c.ProposerID] = c.SourceHash
		s.SourceHash = c.SourceHash
		s.SourceNode = c.Node
	}
	if len(changed) == 0 {
		return Result{Generation: s.Generation}
	}
	s.Generation = next
	s.DesiredAt = c.At
	sort.Strings(changed)
	s.forgetDrained(c.At)
	return Result{Generation: s.Generation, Changed: changed}
}

func (s *State) commitIntents(c *CommitIntents) Result {
	if c.Generation != s.Generation {
		return Result{Err: fmt.Sprintf("stale plan: made at generation %d, current %d", c.Generation, s.Generation), Generation: s.Generation}
	}
	res := Result{Generation: s.Generation, Rejected: map[string]string{}}
	for _, it := range c.Intents {
		if reason := s.checkIntent(it); reason != "" {
			res.Rejected[it.OpID] = reason
			continue
		}
		cp := *it
		cp.CreatedAt = c.At
		s.Intents[it.OpID] = &cp
		s.intentIndex()[it.InstanceID] = it.OpID
		res.Accepted = append(res.Accepted, it.OpID)
		if it.Kind == Terminate {
			if rec := s.Instances[it.InstanceID]; rec != nil && !rec.EverHealthy && countsAsLaunchFailure(it.Reason) {
				s.noteFailure(it.Fleet, it.Reason, c.At)
			}
		}
		s.noteKill(it, c.At)
		s.addEvent(Event{Time: c.At, Fleet: it.Fleet, InstanceID: it.InstanceID, Action: plannedAction(it.Kind),
			Reason: it.Reason, Evidence: it.Evidence, Node: it.Node, OpID: it.OpID})
	}
	if len(res.Rejected) == 0 {
		res.Rejected = nil
	}
	return res
}

// countsAsLaunchFailure says whether terminating an instance that was never
// healthy for this reason means its launch failed.
func countsAsLaunchFailure(reason string) bool {
	return reason == ReasonNeverHealthy || reason == ReasonExited
}

// plannedAction is the action of the event that journals an intent of
// kind k (checkIntent admits no other kinds).
func plannedAction(k IntentKind) EventAction {
	switch k {
	case Launch:
		return ActionLaunchPlanned
	case Drain:
		return ActionDrainPlanned
	case Admit:
		return ActionAdmitPlanned
	}
	return ActionTerminatePlanned
}

// finishedAction is the action of the event that records the outcome of
// an intent of kind k. An outcome this release does not know still gets
// an action of its own, <kind>_<outcome>, as every release names it.
func finishedAction(k IntentKind, o Outcome) EventAction {
	switch {
	case k == Launch && o == Done:
		return ActionLaunched
	case k == Launch && o == Failed:
		return ActionLaunchFailed
	case k == Launch && o == Abandoned:
		return ActionLaunchAbandoned
	case k == Launch:
		return EventAction("launch_" + string(o))
	case k == Drain && o == Done:
		return ActionDrained
	case k == Drain && o == Failed:
		return ActionDrainFailed
	case k == Drain && o == Abandoned:
		return ActionDrainAbandoned
	case k == Drain:
		return EventAction("drain_" + string(o))
	case k == Admit && o == Done:
		return ActionAdmitted
	case k == Admit && o == Failed:
		return ActionAdmitFailed
	case k == Admit && o == Abandoned:
		return ActionAdmitAbandoned
	case k == Admit:
		return EventAction("admit_" + string(o))
	case k == Terminate && o == Done:
		return ActionTerminated
	case o == Failed:
		return ActionTerminateFailed
	case o == Abandoned:
		return ActionTerminateAbandoned
	}
	return EventAction("terminate_" + string(o))
}

func (s *State) checkIntent(it *Intent) string {
	switch {
	case it.OpID == "" || it.InstanceID == "" || it.Fleet == "":
		return "intent lacks op id, instance id or fleet"
	case s.Intents[it.OpID] != nil:
		return "op id already open"
	case s.OpenIntentFor(it.InstanceID) != nil:
		return "instance already has an open intent"
	case s.Fleets[it.Fleet] == nil:
		return "unknown fleet"
	}
	switch it.Kind {
	case Launch:
		if s.Instances[it.InstanceID] != nil {
			return "instance id already recorded"
		}
		if it.ImageDigest == "" {
			return "launch without image digest"
		}
	case Terminate:
		if rec := s.Instances[it.InstanceID]; rec != nil && rec.Admitted {
			return "instance is admitted to traffic: it is drained before it is terminated"
		}
	case Drain:
		rec := s.Instances[it.InstanceID]
		switch {
		case rec == nil:
			return "drain of an instance without a record"
		case !rec.Admitted:
			return "drain of an instance that is not admitted to traffic"
		}
	case Admit:
		rec := s.Instances[it.InstanceID]
		switch {
		case rec == nil:
			return "admission of an instance without a record"
		case rec.Admitted:
			return "instance is admitted already"
		case !s.Fleets[it.Fleet].Spec.Traffic.Gated():
			return "admission in a fleet without traffic backends"
		}
	default:
		return fmt.Sprintf("unknown intent kind %q", it.Kind)
	}
	return ""
}

func (s *State) completeIntent(c *CompleteIntent) Result {
	it := s.Intents[c.OpID]
	if it == nil {
		return Result{Err: "intent " + c.OpID + " is not open", Generation: s.Generation}
	}
	if c.Term < it.Term {
		return Result{Err: fmt.Sprintf("intent %s is owned by term %d, completion from term %d", c.OpID, it.Term, c.Term), Generation: s.Generation}
	}
	delete(s.Intents, c.OpID)
	delete(s.intentIndex(), it.InstanceID)
	s.Finished[string(c.Outcome)]++
	ev := Event{Time: c.At, Fleet: it.Fleet, InstanceID: it.InstanceID, Action: finishedAction(it.Kind, c.Outcome),
		Reason: it.Reason, Node: c.Node, OpID: it.OpID}
	switch {
	case it.Kind == Launch && c.Outcome == Done:
		rec := &Instance{ID: it.InstanceID, Fleet: it.Fleet, ImageDigest: it.ImageDigest, TemplateHash: it.TemplateHash,
			Generation: it.Generation, CreatedAt: c.At, LaunchOp: it.OpID, Image: it.Image}
		if c.Observed != nil {
			rec.observe(c.Observed)
		}
		s.Instances[rec.ID] = rec
		ev.Evidence = []string{"image " + it.ImageDigest}
		if rec.Address != "" {
			ev.Evidence = append(ev.Evidence, "address "+rec.Address)
		}
	case it.Kind == Launch:
		if c.Error != "" {
			ev.Evidence = []string{c.Error}
		}
		if c.Outcome == Failed {
			s.noteFailure(it.Fleet, ReasonLaunchFailed, c.At)
		}
	case it.Kind == Terminate && c.Outcome == Done:
		delete(s.Instances, it.InstanceID)
		ev.Evidence = it.Evidence
	case it.Kind == Drain && c.Outcome == Done:
		if rec := s.edit(it.InstanceID); rec != nil {
			rec.Admitted, rec.Drained = false, true
		}
		ev.Evidence = it.Evidence
	case it.Kind == Admit && c.Outcome == Done:
		if f := s.Fleets[it.Fleet]; s.Instances[it.InstanceID] != nil && f != nil && f.Spec.Traffic.Gated() {
			rec := s.edit(it.InstanceID)
			rec.Admitted, rec.AdmittedAt, rec.Drained = true, c.At, false
			ev.Evidence = []string{"healthy for min_ready and confirmed by every traffic backend", "address " + rec.Address}
		}
	default:
		if c.Error != "" {
			ev.Evidence = []string{c.Error}
		}
	}
	s.addEvent(ev)
	s.forgetDrained(c.At)
	return Result{Generation: s.Generation, Accepted: []string{c.OpID}}
}

func (s *State) claimIntents(c *ClaimIntents) Result {
	res := Result{Generation: s.Generation}
	for _, id := range c.OpIDs {
		it := s.Intents[id]
		if it == nil || it.Term > c.Term {
			continue
		}
		it.Term = c.Term
		it.Attempts++
		res.Accepted = append(res.Accepted, id)
	}
	return res
}

func (s *State) adopt(c *Adopt) Result {
	res := Result{Generation: s.Generation}
	for _, in := range c.Instances {
		if s.Instances[in.ID] != nil || s.Fleets[in.Fleet] == nil || s.OpenIntentFor(in.ID) != nil {
			continue
		}
		cp := *in
		cp.Adopted = true
		s.Instances[in.ID] = &cp
		res.Accepted = append(res.Accepted, in.ID)
		s.addEvent(Event{Time: c.At, Fleet: in.Fleet, InstanceID: in.ID, Action: ActionAdopted, Reason: ReasonOrphan,
			Evidence: []string{"no record explained a running instance", "image " + in.ImageDigest}, Node: c.Node})
	}
	return res
}

func (s *State) markHealthy(c *MarkHealthy) Result {
	for _, id := range c.InstanceIDs {
		if rec := s.Instances[id]; rec == nil || rec.EverHealthy {
			continue
		}
		rec := s.edit(id)
		rec.EverHealthy = true
		if f := s.Fleets[rec.Fleet]; f != nil && rec.ImageDigest == f.ImageDigest && rec.TemplateHash == f.TemplateHash {
			if st := s.Stats[rec.Fleet]; st != nil && st.LaunchFailures > 0 {
				st.LaunchFailures = 0
			}
		}
	}
	return Result{Generation: s.Generation}
}

func (s *State) drainRemoved(c *DrainRemoved) Result {
	it := s.Intents[c.OpID]
	switch {
	case it == nil || it.Kind != Drain:
		return Result{Err: "drain " + c.OpID + " is not open", Generation: s.Generation}
	case c.Term < it.Term:
		return Result{Err: fmt.Sprintf("drain %s is owned by term %d, step from term %d", c.OpID, it.Term, c.Term), Generation: s.Generation}
	case !it.RemovedAt.IsZero():
		return Result{Generation: s.Generation, Accepted: []string{c.OpID}}
	}
	it.RemovedAt = c.At
	s.addEvent(Event{Time: c.At, Fleet: it.Fleet, InstanceID: it.InstanceID, Action: ActionTrafficRemoved, Reason: it.Reason, Node: c.Node, OpID: it.OpID,
		Evidence: []string{"every traffic backend confirmed the instance gets no new traffic"}})
	return Result{Generation: s.Generation, Accepted: []string{c.OpID}}
}

func (s *State) drainFleet(c *DrainFleet) Result {
	f := s.Fleets[c.Fleet]
	switch {
	case f == nil:
		return Result{Err: fmt.Sprintf("fleet %q is not known", c.Fleet), Generation: s.Generation}
	case !f.Unconfigured:
		return Result{Err: fmt.Sprintf("fleet %q is still configured in the fleet files: set size = 0 there, or remove it from the files first", c.Fleet), Generation: s.Generation}
	case f.Draining:
		return Result{Generation: s.Generation}
	}
	nf := *f
	nf.Draining = true
	s.Fleets[c.Fleet] = &nf
	s.addEvent(Event{Time: c.At, Fleet: c.Fleet, Action: ActionDrainStarted, Reason: "operator", Node: c.Node})
	s.forgetDrained(c.At)
	return Result{Generation: s.Generation}
}

// edit replaces the record of instance id with a copy and returns the
// copy, to be changed; nil when there is no record. Records are replaced,
// never changed in place, so that a reader may keep pointers to them after
// it released the state (the leader's pass shares the records instead of
// copying each of them).
func (s *State) edit(id string) *Instance {
	rec := s.Instances[id]
	if rec == nil {
		return nil
	}
	cp := *rec
	s.Instances[id] = &cp
	return &cp
}

// ungate clears the traffic flags of a fleet's instances once the fleet
// has no traffic backend any more: nothing is left to drain them from.
func (s *State) ungate(fleet string) {
	for id, in := range s.Instances {
		if in.Fleet == fleet && (in.Admitted || !in.AdmittedAt.IsZero() || in.Drained) {
			in = s.edit(id)
			in.Admitted, in.AdmittedAt, in.Drained = false, time.Time{}, false
		}
	}
}

// forgetDrained removes draining fleets that have no instances and no open
// intents left.
func (s *State) forgetDrained(at time.Time) {
	// It runs at every finished intent: the common case, no fleet
	// draining, costs no sort of the fleet names.
	draining := false
	for _, f := range s.Fleets {
		draining = draining || f.Draining
	}
	if !draining {
		return
	}
	for _, name := range s.FleetNames() {
		f := s.Fleets[name]
		if !f.Draining {
			continue
		}
		busy := false
		for _, in := range s.Instances {
			if in.Fleet == name {
				busy = true
				break
			}
		}
		for _, it := range s.Intents {
			if it.Fleet == name {
				busy = true
				break
			}
		}
		if !busy {
			delete(s.Fleets, name)
			delete(s.Stats, name)
			s.addEvent(Event{Time: at, Fleet: name, Action: ActionFleetForgotten, Reason: "drained"})
		}
	}
}

// noteKill records the time of a remediation kill for the kill-rate
// limits: a terminate or drain of a running instance for a remediation
// reason. The terminate that follows a drain is the same kill.
func (s *State) noteKill(it *Intent, at time.Time) {
	if it.Kind != Terminate && it.Kind != Drain || !slices.Contains(RemediationReasons, it.Reason) {
		return
	}
	if rec := s.Instances[it.InstanceID]; it.Kind == Terminate && rec != nil && rec.Drained {
		return
	}
	s.recordKill(it.Fleet, at)
}

// recordKill logs a remediation kill's time for the fleet's and the
// cluster's kill rates.
func (s *State) recordKill(fleet string, at time.Time) {
	st := s.stats(fleet)
	st.Kills = appendBounded(st.Kills, at)
	s.Kills = appendBounded(s.Kills, at)
}

func appendBounded(ts []time.Time, t time.Time) []time.Time {
	ts = append(ts, t)
	if len(ts) > MaxKillLog {
		ts = append(ts[:0:0], ts[len(ts)-MaxKillLog:]...)
	}
	return ts
}

func (s *State) addPause(c *AddPause) Result {
	s.prunePauses(c.At)
	switch {
	case c.Reason == "" || len(c.Reason) > MaxPauseReason:
		return Result{Err: fmt.Sprintf("a pause needs a reason of 1 to %d bytes, got %d", MaxPauseReason, len(c.Reason)), Generation: s.Generation}
	case len(c.By) > MaxPauseReason:
		return Result{Err: "pause: by is too long", Generation: s.Generation}
	case c.Fleet != "" && s.Fleets[c.Fleet] == nil:
		return Result{Err: fmt.Sprintf("fleet %q is not known", c.Fleet), Generation: s.Generation}
	case len(s.Pauses) >= MaxPauses:
		return Result{Err: fmt.Sprintf("%d pauses are in force already, the most there may be: remove one first", len(s.Pauses)), Generation: s.Generation}
	case c.For < 0:
		return Result{Err: "pause: a negative duration", Generation: s.Generation}
	}
	s.NextPauseID++
	p := Pause{ID: fmt.Sprintf("p%d", s.NextPauseID), Fleet: c.Fleet, Reason: c.Reason, By: c.By, At: c.At}
	if c.For > 0 {
		p.Until = c.At.Add(c.For)
	}
	s.Pauses = append(s.Pauses, p)
	ev := []string{"pause " + p.ID, "reason: " + p.Reason}
	if !p.Until.IsZero() {
		ev = append(ev, "until "+p.Until.UTC().Format(time.RFC3339))
	}
	if p.By != "" {
		ev = append(ev, "by "+p.By)
	}
	s.addEvent(Event{Time: c.At, Fleet: c.Fleet, Action: ActionPaused, Reason: "operator", Evidence: ev, Node: c.Node})
	return Result{Generation: s.Generation, Accepted: []string{p.ID}}
}

func (s *State) unpause(c *Unpause) Result {
	s.prunePauses(c.At)
	var kept []Pause
	var removed []string
	for _, p := range s.Pauses {
		if p.ID == c.ID || c.All && (c.Fleet == "" || p.Fleet == c.Fleet) {
			removed = append(removed, p.ID)
			s.addEvent(Event{Time: c.At, Fleet: p.Fleet, Action: ActionUnpaused, Reason: "operator", Node: c.Node,
				Evidence: []string{"pause " + p.ID, "reason was: " + p.Reason}})
			continue
		}
		kept = append(kept, p)
	}
	if len(removed) == 0 {
		if c.All {
			return Result{Generation: s.Generation}
		}
		return Result{Err: fmt.Sprintf("no pause %q is in force", c.ID), Generation: s.Generation}
	}
	s.Pauses = kept
	return Result{Generation: s.Generation, Accepted: removed}
}

// prunePauses drops the pauses that expired by at.
func (s *State) prunePauses(at time.Time) {
	kept := s.Pauses[:0:0]
	for _, p := range s.Pauses {
		if p.Until.IsZero() || at.Before(p.Until) {
			kept = append(kept, p)
			continue
		}
		s.addEvent(Event{Time: at, Fleet: p.Fleet, Action: ActionUnpaused, Reason: "expired",
			Evidence: []string{"pause " + p.ID, "reason was: " + p.Reason}})
	}
	s.Pauses = kept
}

func (s *State) retryFleet(c *RetryFleet) Result {
	if s.Fleets[c.Fleet] == nil {
		return Result{Err: fmt.Sprintf("fleet %q is not known", c.Fleet), Generation: s.Generation}
	}
	st := s.stats(c.Fleet)
	ev := Event{Time: c.At, Fleet: c.Fleet, Action: ActionLaunchRetry, Reason: "operator", Node: c.Node,
		Evidence: []string{fmt.Sprintf("%d consecutive launch failures forgotten (last: %s)", st.LaunchFailures, st.LastFailureReason)}}
	if c.By != "" {
		ev.Evidence = append(ev.Evidence, "by "+c.By)
	}
	st.LaunchFailures, st.LastFailureAt, st.LastFailureReason = 0, time.Time{}, ""
	s.addEvent(ev)
	return Result{Generation: s.Generation}
}

func (s *State) quarantine(c *Quarantine) Result {
	res := Result{Generation: s.Generation, Rejected: map[string]string{}}
	for _, q := range c.Entries {
		if why := s.checkQuarantine(q); why != "" {
			res.Rejected[q.InstanceID] = why
			continue
		}
		rec := s.edit(q.InstanceID)
		if !rec.Drained && slices.Contains(RemediationReasons, q.Reason) { // a drain was the kill the rates counted
			s.recordKill(q.Fleet, c.At)
		}
		rec.Quarantined, rec.QuarantinedAt, rec.QuarantineReason = true, c.At, q.Reason
		res.Accepted = append(res.Accepted, q.InstanceID)
		ttl := s.Fleets[q.Fleet].Spec.Remediation.Quarantine.TTL
		s.addEvent(Event{Time: c.At, Fleet: q.Fleet, InstanceID: q.InstanceID, Action: ActionQuarantined, Reason: q.Reason, Node: c.Node,
			Evidence: append(append([]string(nil), q.Evidence...), "kept running for forensics, out of traffic, until "+c.At.Add(ttl).UTC().Format(time.RFC3339))})
	}
	if len(res.Rejected) == 0 {
		res.Rejected = nil
	}
	return res
}

func (s *State) checkQuarantine(q QuarantineEntry) string {
	rec := s.Instances[q.InstanceID]
	f := s.Fleets[q.Fleet]
	switch {
	case rec == nil || rec.Fleet != q.Fleet:
		return "no record of the instance in the fleet"
	case f == nil || f.Spec.Remediation.Quarantine == nil:
		return "the fleet has no quarantine"
	case rec.Quarantined:
		return "quarantined already"
	case rec.Admitted:
		return "admitted to traffic: it is drained first"
	case s.OpenIntentFor(q.InstanceID) != nil:
		return "an intent is open on it"
	}
	n := 0
	for _, in := range s.Instances {
		if in.Fleet == q.Fleet && in.Quarantined {
			n++
		}
	}
	if n >= f.Spec.Remediation.Quarantine.Max {
		return fmt.Sprintf("the fleet's quarantine holds %d instances, its max", n)
	}
	return ""
}

func (s *State) recordStorms(c *RecordStorms) Result {
	for _, name := range slices.Sorted(maps.Keys(c.Fleets)) {
		if s.Fleets[name] == nil {
			continue
		}
		st := s.stats(name)
		if s.storm(&st.Storm, c.Fleets[name], c.At) {
			s.addEvent(stormEvent(name, st.Storm, c))
		}
	}
	if c.Cluster != nil && s.storm(&s.Storm, *c.Cluster, c.At) {
		s.addEvent(stormEvent("", s.Storm, c))
	}
	return Result{Generation: s.Generation}
}

// storm moves a storm to active or ended; it reports whether it changed.
func (s *State) storm(st *Storm, active bool, at time.Time) bool {
	switch {
	case active == st.Active:
		return false
	case active:
		st.Active, st.Since = true, at
	default:
		st.Active, st.EndedAt = false, at
	}
	return true
}

func stormEvent(fleet string, st Storm, c *RecordStorms) Event {
	ev := Event{Time: c.At, Fleet: fleet, Action: ActionStormStarted, Reason: "storm", Node: c.Node}
	scope := "every running instance of the fleet fails at once"
	if fleet == "" {
		scope = "every fleet fails at once"
	}
	ev.Evidence = []string{scope + ": an observer problem is likelier than an instance problem; nothing is killed for its health"}
	if !st.Active {
		ev.Action = ActionStormEnded
		ev.Evidence = []string{"the storm began at " + st.Since.UTC().Format(time.RFC3339) + "; kills for health resume after the storm cooldown"}
	}
	return ev
}

func (s *State) noteFailure(fleet, reason string, at time.Time) {
	st := s.stats(fleet)
	st.LaunchFailures++
	st.LastFailureAt = at
	st.LastFailureReason = reason
}

// dropNil returns xs without its nil elements.
func dropNil[T any](xs []*T) []*T {
	out := xs[:0:0]
	for _, x := range xs {
		if x != nil {
			out = append(out, x)
		}
	}
	return out
}
