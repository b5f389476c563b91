package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// maxErrorText bounds an error message kept in the replicated state.
const maxErrorText = 2 << 10

// resolveRetry is how often fleets whose image could not be resolved are
// tried again.
const resolveRetry = 10 * time.Second

// Proposal is one agent's fleet files, sent to the leader to be
// committed. It carries the files themselves, not what the proposer made
// of them: the leader parses and validates them with the very rules an
// agent applies to its own directory, so nothing reaches the desired
// state that a fleet file could not say.
type Proposal struct {
	ProposerID   string `json:"proposer_id"`
	ProposerName string `json:"proposer_name"`
	// Dir is the proposer's fleets directory (absolute): file names in
	// errors, and the base of relative local image paths.
	Dir  string `json:"dir"`
	Hash string `json:"hash"`
	// StartHash is the hash of the files the proposer read when it
	// started: an agent that never proposed is not taken to have changed
	// its files until they differ from that.
	StartHash string        `json:"start_hash"`
	Files     []config.File `json:"files"`
}

// wantProposal returns this agent's fleet files when the leader has not
// judged them yet. The leader decides with the authoritative state (see
// needsCommit); a follower's own copy may lag, e.g. right after a restart.
func (a *Agent) wantProposal() (*Proposal, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fleets == nil || a.fleetsHash == a.settledHash {
		return nil, false
	}
	return &Proposal{ProposerID: a.node.ID(), ProposerName: a.cfg.NodeName, Dir: a.cfg.FleetsDir, Hash: a.fleetsHash,
		StartHash: a.startHash, Files: a.fleetFiles}, true
}

// parseProposal validates a proposal as the leader must before it commits
// anything: the proposer is a server of this cluster, the hash is the
// files' own, and the files parse and validate under the config rules.
func (a *Agent) parseProposal(p *Proposal) ([]state.FleetSpec, error) {
	known := false
	if servers, err := a.node.Servers(); err == nil {
		for _, s := range servers {
			known = known || string(s.ID) == p.ProposerID
		}
	}
	switch {
	case !known:
		return nil, rpcFail(http.StatusForbidden, "proposal from %.64q, which is not a server of this cluster", p.ProposerID)
	case p.ProposerName != "" && (config.CheckNodeName(p.ProposerName) != nil || len(p.ProposerName) > maxNodeNameLen):
		return nil, rpcFail(http.StatusBadRequest, "proposal: proposer name %.80q is not a node name", p.ProposerName)
	case !filepath.IsAbs(p.Dir) || filepath.Clean(p.Dir) != p.Dir || len(p.Dir) > 4096:
		return nil, rpcFail(http.StatusBadRequest, "proposal: fleets directory %.200q is not a clean absolute path", p.Dir)
	case p.Hash != config.HashFleetFiles(p.Files):
		return nil, rpcFail(http.StatusBadRequest, "proposal: hash %.80q does not match its files", p.Hash)
	case len(p.StartHash) > 128:
		return nil, rpcFail(http.StatusBadRequest, "proposal: start hash is too long")
	}
	set, err := config.ParseFleetFiles(p.Dir, p.Files)
	if err != nil {
		return nil, rpcFail(http.StatusUnprocessableEntity, "the fleet files of %s are invalid on the leader %s: %v", clip(p.ProposerName, maxNodeNameLen), a.cfg.NodeName, err)
	}
	specs := make([]state.FleetSpec, 0, len(set.Fleets))
	for _, f := range set.Fleets {
		specs = append(specs, state.SpecOf(f))
	}
	return specs, nil
}

// needsCommit says whether a proposal changes anything the cluster should
// act on: only files that changed since their agent last proposed them
// (or, for an agent that never proposed, since it started), or the very
// first desired state. So agents whose directories differ never flip-flop
// the desired state; status and immutd_config_diverged report the
// difference.
func needsCommit(st *state.State, p *Proposal) bool {
	if st.Generation == 0 {
		return true
	}
	last, ok := st.Proposed[p.ProposerID]
	if !ok {
		last = p.StartHash
	}
	return p.Hash != last
}

func (a *Agent) setDiverged(d bool) {
	v := 0.0
	if d {
		v = 1
	}
	a.m.configDiverged.Set(v)
}

// proposeLoop proposes this agent's fleet files whenever they need it: on
// the leader it commits them, on a follower it forwards them.
func (a *Agent) proposeLoop(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	backoff := time.Duration(0)
	for {
		changes := a.node.Changes()
		a.updateDiverged()
		if p, ok := a.wantProposal(); ok {
			err := a.propose(ctx, p)
			switch {
			case err == nil:
				backoff = 0
				a.mu.Lock()
				a.settledHash = p.Hash
				a.mu.Unlock()
			case ctx.Err() != nil:
				return ctx.Err()
			default:
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				a.log.Warn("fleet files not committed yet; retrying", zap.Duration("retry_in", backoff), zap.Error(err))
			}
		}
		wait := time.After(backoff)
		if backoff == 0 {
			wait = nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.proposeNow:
		case <-changes:
		case <-tick.C:
		case <-wait:
		}
	}
}

func (a *Agent) updateDiverged() {
	a.mu.Lock()
	hash := a.fleetsHash
	a.mu.Unlock()
	var committed string
	a.node.Read(func(st *state.State) { committed = st.SourceHash })
	a.setDiverged(hash != "" && committed != "" && hash != committed)
}

func (a *Agent) propose(ctx context.Context, p *Proposal) error {
	if !a.node.IsLeader() {
		err := a.forwardProposal(ctx, p)
		if !errors.Is(err, errBecameLeader) {
			return err
		}
	}
	for {
		err := a.commitProposal(ctx, p)
		if !errors.Is(err, errNotReady) {
			return err
		}
		// Leading, but the barrier is not through yet: a moment.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if !a.node.IsLeader() {
			return errNotReady
		}
	}
}

// errNotReady: this node leads but has not established leadership yet.
var errNotReady = errors.New("leader is not ready yet")

// commitProposal pins the proposal's images and commits it as a new
// desired generation. Leader only.
func (a *Agent) commitProposal(ctx context.Context, p *Proposal) error {
	t := a.currentTerm()
	if t == nil {
		return errNotReady
	}
	specs, err := a.parseProposal(p)
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 3; attempt++ {
		needed := true
		a.node.Read(func(st *state.State) { needed = needsCommit(st, p) })
		if !needed {
			return nil
		}
		v := a.readView()
		fleets := make([]*state.DesiredFleet, 0, len(specs))
		pins := pinCache{}
		for i := range specs {
			fleets = append(fleets, t.pin(ctx, &specs[i], v.fleets[specs[i].Name], false, pins))
		}
		a.mu.Lock()
		autoDrain := a.autoDrain
		a.mu.Unlock()
		res, err := a.node.Apply(ctx, &state.SetDesired{BaseGeneration: v.generation, SourceHash: p.Hash, Fleets: fleets,
			AutoDrain: autoDrain, At: time.Now(), Node: p.ProposerName, ProposerID: p.ProposerID})
		if err != nil {
			return err
		}
		if res.Error() != nil {
			continue // the base moved under us: read again
		}
		if len(res.Changed) > 0 {
			a.log.Info("desired state committed", zap.Uint64("generation", res.Generation), zap.Strings("fleets", res.Changed),
				zap.String("node", p.ProposerName))
		}
		a.Wake()
		return nil
	}
	return fmt.Errorf("desired state kept moving; will retry")
}

// repin re-resolves the images of committed fleets (those whose resolution
// failed, or the named ones when forced) without touching their specs.
func (t *term) repin(ctx context.Context, force map[string]bool) error {
	a := t.a
	v := a.readView()
	var fleets []*state.DesiredFleet
	changed := false
	pins := pinCache{}
	for _, name := range sortedKeys(v.fleets) {
		old := v.fleets[name]
		if old.Unconfigured {
			continue
		}
		spec := old.Spec
		if old.ResolveError != "" || force[name] {
			d := t.pin(ctx, &spec, old, true, pins)
			changed = changed || d.ImageDigest != old.ImageDigest || d.ResolveError != old.ResolveError
			fleets = append(fleets, d)
			continue
		}
		cp := *old
		fleets = append(fleets, &cp)
	}
	if !changed {
		return nil
	}
	res, err := a.node.Apply(ctx, &state.SetDesired{BaseGeneration: v.generation, Fleets: fleets, At: time.Now(), Node: a.cfg.NodeName})
	if err != nil {
		return err
	}
	if err := res.Error(); err != nil {
		return err
	}
	a.Wake()
	return nil
}

// pinCache remembers the images resolved while one desired state is
// built, so that a thousand fleets sharing an image resolve it (and, for
// a local bundle, hash it) once.
type pinCache map[string]pinned

type pinned struct {
	digest string
	err    error
}

// pin builds a fleet's desired state, resolving its image unless the
// committed one can be kept: a fleet whose image reference did not change
// keeps its digest, so neither an edited bundle nor a moved tag leaks into
// a running fleet.
func (t *term) pin(ctx context.Context, f *state.FleetSpec, old *state.DesiredFleet, force bool, cache pinCache) *state.DesiredFleet {
	d := &state.DesiredFleet{Spec: *f, TemplateHash: f.TemplateHash()}
	if !force && old != nil && old.ImageDigest != "" && old.ResolveError == "" &&
		old.Spec.Image == f.Image && old.Spec.Provider == f.Provider {
		d.ImageDigest = old.ImageDigest
		return d
	}
	if old != nil {
		d.ImageDigest = old.ImageDigest // keep running the last good image on failure
	}
	resolver, ok := t.a.providers[f.Provider].(reconcile.ImageResolver)
	if !ok {
		d.ResolveError = fmt.Sprintf("provider %q is not configured on agent %s", f.Provider, t.a.cfg.NodeName)
		return d
	}
	key := f.Provider + "\x00" + f.Image
	res, ok := cache[key]
	if !ok {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		res.digest, res.err = resolver.Resolve(rctx, f.Image)
		cancel()
		cache[key] = res
	}
	digest, err := res.digest, res.err
	if err != nil {
		d.ResolveError = clip(err.Error(), maxErrorText)
		t.log.Error("image not resolved; the fleet stays on its last pinned image", zap.String("fleet", f.Name),
			zap.String("image", f.Image), zap.String("reason", "image_unresolved"), zap.Error(err))
		return d
	}
	d.ImageDigest = digest
	if old != nil && old.ImageDigest != "" && old.ImageDigest != digest {
		t.log.Info("image pinned", zap.String("fleet", f.Name), zap.String("image", f.Image), zap.String("digest", digest), zap.String("previous_digest", old.ImageDigest))
	}
	return d
}

// Drain starts draining an unconfigured fleet.
func (a *Agent) Drain(ctx context.Context, fleet string) error {
	if err := checkFleetName(fleet); err != nil {
		return err
	}
	if !a.node.IsLeader() {
		if err := a.forwardJSON(ctx, "/cluster/v1/drain", map[string]string{"fleet": fleet}, nil); !errors.Is(err, errBecameLeader) {
			return err
		}
	}
	res, err := a.node.Apply(ctx, &state.DrainFleet{Fleet: fleet, At: time.Now(), Node: a.cfg.NodeName})
	if err != nil {
		return err
	}
	if err := res.Error(); err != nil {
		return err
	}
	a.log.Info("fleet drain started", zap.String("fleet", fleet), zap.String("reason", "operator"))
	a.Wake()
	return nil
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
