package reconcile

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/state"
)

// The guards that hold remediation back beyond the max_unhealthy breaker:
//
//   - kill rates: at most N remediation kills in any window, per fleet
//     (remediation.rate) and for the cluster (limits.remediation_rate);
//     while more than remediation.unhealthy_threshold of a fleet's running
//     instances fail (two at least, of three running at least), its
//     remediation.secondary_rate applies as well; a scale-down (instances
//     beyond size + max_surge) is never held by a rate;
//   - storms: when every running instance of a fleet fails at once (at
//     least stormMin of them, in a fleet that wants instances), or every
//     fleet with running instances does, the observer is the likelier
//     culprit: nothing is killed for its health, and after the storm
//     remediation.storm_cooldown passes before it is again;
//   - pauses: an operator's pause holds every action of the fleet;
//   - report: what remediation only reports is held too.
//
// A failing instance whose kill a storm, its cooldown, the settle window
// (see health.go) or the rates hold keeps its slot: no replacement is
// launched for it either (keepSlots).
//
// A held action is part of the plan (Result.Held), so `immutd plan` and
// `immutd explain` can say what would happen and what prevents it.

// stormMin is the fewest running instances of a fleet that make a storm
// when all of them fail: one or two failing instances are instance
// problems as often as not.
const stormMin = 3

// isRemediation says whether a kill for this reason counts against the
// kill rates.
func isRemediation(r Reason) bool { return slices.Contains(state.RemediationReasons, string(r)) }

// clusterGuard is the cluster-wide part of the guards, shared by the
// fleets of one plan in turn.
type clusterGuard struct {
	rate  quantity.Rate
	left  int // -1: no limit
	spent int
	next  time.Time
	storm bool
	// ended is when the last cluster-wide storm ended.
	ended time.Time
}

// clusterGuards works out the cluster-wide kill budget and whether every
// fleet fails at once.
func clusterGuards(in Input, fps []*fleetPlan) *clusterGuard {
	g := &clusterGuard{rate: in.Limits.RemediationRate, left: in.Limits.RemediationRate.Left(in.Kills, in.Now),
		next: in.Limits.RemediationRate.NextAt(in.Kills, in.Now), ended: in.Storm.EndedAt}
	withRunning, failing := 0, 0
	all := true
	for _, fp := range fps {
		if fp.frozen || fp.running == 0 || fp.size == 0 || fp.spec.Remediation.NoStormGuard {
			continue
		}
		withRunning++
		failing += fp.sick
		all = all && fp.sick == fp.running
	}
	g.storm = all && withRunning >= 2 && failing >= stormMin
	if in.Storm.Active && !g.storm {
		g.ended = in.Now // ended in this pass: the leader records it
	}
	return g
}

// guards is what the guards allow one fleet in one pass.
type guards struct {
	cluster *clusterGuard
	rate    quantity.Rate // the fleet rate in force
	second  bool          // rate is the secondary rate
	left    int           // -1: no limit
	next    time.Time
	// storm: a storm stops kills for health; cooldownUntil: they resume
	// then (zero when no cooldown runs).
	storm, clusterStorm bool
	cooldownUntil       time.Time
	paused              bool
	heldBy              map[Cause]int
	// byCluster: the cluster's rate held a kill (not only the fleet's).
	byCluster bool
	cooldown  time.Duration
}

// stormy: every running instance of the fleet fails, at least stormMin
// of them, in a fleet that wants instances (one scaled to zero removes
// them all anyway).
func (fp *fleetPlan) stormy() bool {
	return !fp.spec.Remediation.NoStormGuard && fp.size > 0 && fp.running >= stormMin && fp.sick == fp.running
}

func (fp *fleetPlan) guardsOf(in Input, cg *clusterGuard) *guards {
	r := &fp.rem
	g := &guards{cluster: cg, rate: r.Rate, heldBy: map[Cause]int{}, paused: len(fp.paused) > 0}
	if t := r.UnhealthyThreshold; t != nil && r.SecondaryRate.Set() && fp.running >= stormMin && fp.sick >= 2 &&
		fp.sick*100 > t.Value*fp.running {
		g.rate, g.second = r.SecondaryRate, true
	}
	kills := fp.fi.Stats.Kills
	g.left, g.next = g.rate.Left(kills, in.Now), g.rate.NextAt(kills, in.Now)
	if r.Rate.Set() && g.second {
		// The secondary rate only ever slows the primary one down.
		g.left = min(g.left, r.Rate.Left(kills, in.Now))
	}
	g.storm = fp.stormy()
	g.clusterStorm = cg.storm && !r.NoStormGuard
	fp.st.Storm, fp.st.Guarded = g.storm, true
	ended := fp.fi.Stats.Storm.EndedAt
	if fp.fi.Stats.Storm.Active && !g.storm {
		ended = in.Now // ended in this pass
	}
	if cg.ended.After(ended) {
		ended = cg.ended
	}
	g.cooldown = *r.StormCooldown
	if until := ended.Add(g.cooldown); !g.storm && !g.clusterStorm && !ended.IsZero() && in.Now.Before(until) {
		g.cooldownUntil = until
	}
	if fp.size == 0 {
		// A fleet that wants no instance removes them all: no storm of
		// its own or the cluster's holds that, nor a cooldown.
		g.clusterStorm, g.cooldownUntil = false, time.Time{}
	}
	return g
}

// allows says which guard, if any, holds a kill (a remediation kill
// when remedial), spent being the remediation kills this fleet chose
// already in this pass.
func (g *guards) allows(remedial, forHealth bool, spent int) (Cause, string) {
	// A storm holds every kill for health, the terminate after a drain
	// too; the rates count only what they have not counted yet.
	if forHealth && (g.storm || g.clusterStorm) {
		return g.count(CauseStorm), ""
	}
	if forHealth && !g.cooldownUntil.IsZero() {
		return g.count(CauseStormCooldown), "kills for health resume at " + stamp(g.cooldownUntil)
	}
	if !remedial {
		return "", ""
	}
	if g.left >= 0 && spent >= g.left {
		return g.count(CauseRateLimited), g.rateDetail()
	}
	if c := g.cluster; c.left >= 0 && c.spent+spent >= c.left {
		g.byCluster = true
		return g.count(CauseRateLimited), g.clusterDetail()
	}
	return "", ""
}

// held is a guard's hold on an instance's slot, and why.
type held struct {
	guard  Cause
	detail string
}

// keepSlots decides which failing or changed instances keep their slots
// this pass: their kill is held, and no replacement is launched for them
// (a replacement would break a storm's picture, and a kill the rate holds
// would turn into a replacement now and the kill of a healthy instance,
// the excess, later). In order of removal: in a storm or its cooldown
// every failing instance keeps its slot, an unhealthy one still settling
// keeps it, and past what the kill rates afford (the fleet's, and the
// cluster's as it stands before this pass) the rest keep theirs.
func (fp *fleetPlan) keepSlots(now time.Time) {
	g := fp.guard
	fp.kept = map[string]held{}
	if g == nil {
		return
	}
	afford, rateDetail := g.left, g.rateDetail()
	if c := g.cluster.left; c >= 0 && (afford < 0 || c < afford) {
		afford, rateDetail = c, g.clusterDetail()
	}
	for _, cand := range removalCandidates(fp.cls, fp.size, fp.counted, fp.d.Draining) {
		c := cand.c
		if !isRemediation(cand.reason) || c.drained {
			continue
		}
		wait, until := settling(c.inst, fp.spec, now)
		switch {
		case c.sick && (g.storm || g.clusterStorm):
			fp.kept[c.inst.ID] = held{guard: CauseStorm}
		case c.sick && !g.cooldownUntil.IsZero():
			fp.kept[c.inst.ID] = held{guard: CauseStormCooldown, detail: "kills for health resume at " + stamp(g.cooldownUntil)}
		case cand.reason == ReasonUnhealthy && wait:
			fp.kept[c.inst.ID] = held{guard: GuardSettling, detail: "waits until " + stamp(until) +
				" (the longest interval × unhealthy_threshold of the fleet's checks), so that instances failing together are seen failing together"}
		case afford == 0:
			fp.kept[c.inst.ID] = held{guard: CauseRateLimited, detail: rateDetail}
			g.byCluster = g.byCluster || rateDetail == g.clusterDetail()
		case afford > 0:
			afford--
		}
	}
}

// stops says which guard stops a sick instance's kill before the
// breaker is asked: a storm explains more than max_unhealthy does.
func (g *guards) stops() Cause {
	switch {
	case g.storm || g.clusterStorm:
		return CauseStorm
	case !g.cooldownUntil.IsZero():
		return CauseStormCooldown
	}
	return ""
}

func (g *guards) count(c Cause) Cause { g.heldBy[c]++; return c }

func (g *guards) clusterDetail() string {
	c := g.cluster
	return fmt.Sprintf("limits.remediation_rate %s of the cluster is used up; next kill at %s", c.rate, stampOrNever(c.next))
}

func (g *guards) rateDetail() string {
	name := "remediation.rate"
	if g.second {
		name = "remediation.secondary_rate (more than unhealthy_threshold of the running instances fail)"
	}
	return fmt.Sprintf("%s %s is used up; next kill at %s", name, g.rate, stampOrNever(g.next))
}

// commit adds a fleet's kills of this pass to the cluster's budget; a
// paused fleet's are held, so they spend nothing.
func (g *guards) commit(spent int) {
	if !g.paused {
		g.cluster.spent += spent
	}
}

// guardBlocks reports the guards that held kills as the fleet's blocks.
func (fp *fleetPlan) guardBlocks() {
	g := fp.guard
	switch {
	case g.heldBy[CauseStorm] > 0:
		scope := fmt.Sprintf("all %d running instances of the fleet fail at once", fp.running)
		if g.clusterStorm {
			scope = "every fleet with running instances fails at once"
		}
		fp.block(CauseStorm, scope+": an observer problem (network, probes, a shared dependency) is likelier than broken instances, so none is killed for its health")
	case g.heldBy[CauseStormCooldown] > 0:
		fp.block(CauseStormCooldown, fmt.Sprintf("a storm ended; kills for health resume at %s (storm_cooldown %s)", stamp(g.cooldownUntil), g.cooldown))
	}
	if n := g.heldBy[CauseRateLimited]; n > 0 {
		detail := g.rateDetail()
		if g.byCluster {
			detail = g.clusterDetail()
		}
		fp.block(CauseRateLimited, fmt.Sprintf("%d remediation kills wait: %s", n, detail))
	}
}

// pausedBy finds the pauses that hold the fleet.
func (fp *fleetPlan) pausedBy(ps []state.Pause, now time.Time) {
	for i := range ps {
		if ps[i].Holds(fp.spec.Name, now) {
			fp.paused = append(fp.paused, ps[i])
		}
	}
}

// hold moves every action of a paused fleet to the held ones.
func (fp *fleetPlan) hold() {
	if len(fp.paused) == 0 {
		return
	}
	var why []string
	for _, p := range fp.paused {
		w := p.ID + " (" + p.Reason
		if p.By != "" {
			w += ", by " + p.By
		}
		if !p.Until.IsZero() {
			w += ", until " + stamp(p.Until)
		}
		if p.Fleet == "" {
			w += ", every fleet"
		}
		why = append(why, w+")")
	}
	detail := "paused: " + strings.Join(why, "; ")
	for _, a := range fp.acts {
		fp.held = append(fp.held, Held{Action: a, Guard: CausePaused, Detail: detail})
	}
	fp.acts = nil
	fp.block(CausePaused, detail+": nothing new starts, what is in flight finishes")
}

// reportHeld holds the kills of the instances remediation only reports,
// and says so.
func (fp *fleetPlan) reportHeld() {
	if fp.reported == 0 {
		return
	}
	r := &fp.spec.Remediation
	for _, c := range fp.cls {
		if !c.reported {
			continue
		}
		act := Action{Kind: ActTerminate, Fleet: fp.spec.Name, InstanceID: c.inst.ID, Reason: c.remedy, Evidence: c.remedyEv, Running: true}
		if c.admitted {
			act.Kind = ActDrain
		}
		fp.held = append(fp.held, Held{Action: act, Guard: CauseDisabled, Detail: "remediation only reports " + string(c.remedy)})
	}
	if !r.Enabled {
		fp.block(CauseDisabled, fmt.Sprintf("remediation is disabled for this fleet: %d unhealthy or changed instances are only reported, kept and counted toward size", fp.reported))
		return
	}
	fp.block(CauseDisabled, fmt.Sprintf("remediation.report lists %s: %d instances are only reported, kept and counted toward size", strings.Join(r.Report, ", "), fp.reported))
}

// rolloutHeld holds the replacement of the outdated instances a rollout
// keeps, with why: paused (by an operator, a checkpoint, a failure or an
// inconclusive analysis), canaries waiting for promotion, a blue-green
// old set kept for the switch and the bake, or a version not recorded yet.
func (fp *fleetPlan) rolloutHeld() {
	g, detail := fp.rolloutGuard()
	for _, c := range fp.cls {
		if c.outdated && c.reason == "" && c.inst.Open == nil { // one going for its health is not kept
			fp.holdAction(Action{Kind: ActTerminate, Fleet: fp.spec.Name, InstanceID: c.inst.ID, Reason: c.keptFor, Evidence: c.keptEv, Running: true}, g, detail)
		}
	}
}

func (fp *fleetPlan) rolloutGuard() (Cause, string) {
	r, rs := fp.d.Rollout, fp.st.Rollout
	switch {
	case r == nil:
		return GuardRolloutPending, "the new version is recorded in this pass"
	case r.Paused:
		return GuardRolloutPaused, r.PauseReason
	case rs.Canary > 0:
		return GuardCanary, fmt.Sprintf("%d canaries run next to the old instances until the rollout is promoted", rs.Canary)
	case rs.BlueGreen:
		return GuardBlueGreen, "the old set is kept until the new one is switched to and stable"
	}
	return GuardRolloutPending, "the new version is recorded in this pass"
}

// holdAction records an action a guard holds.
func (fp *fleetPlan) holdAction(a Action, g Cause, detail string) {
	fp.held = append(fp.held, Held{Action: a, Guard: g, Detail: detail})
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func stampOrNever(t time.Time) string {
	if t.IsZero() {
		return "never (a rate of 0)"
	}
	return stamp(t)
}
