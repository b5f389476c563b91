package leader

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/cut"
	"github.com/immutd/immutd/internal/state"
)

// maxErrorText bounds an error message kept in the replicated state.
const maxErrorText = 2 << 10

// ErrNotReady: the term has not established leadership yet.
var ErrNotReady = errors.New("leader is not ready yet")

// Proposal is a set of fleets to commit as the desired state, already
// validated by the caller with the config rules.
type Proposal struct {
	Specs []state.FleetSpec
	// SourceHash is the hash of the fleet files; StartHash that of the
	// files the proposer read when it started (see NeedsCommit).
	SourceHash, StartHash string
	ProposerID, Proposer  string
	// AutoDrain drains fleets the proposal removes.
	AutoDrain bool
}

// NeedsCommit says whether a proposal changes anything the cluster
// should act on: only files that changed since their agent last proposed
// them (or, for an agent that never proposed, since it started), or the
// very first desired state. So agents whose directories differ never
// flip-flop the desired state.
func NeedsCommit(st *state.State, p *Proposal) bool {
	if st.Generation == 0 {
		return true
	}
	last, ok := st.Proposed[p.ProposerID]
	if !ok {
		last = p.StartHash
	}
	return p.SourceHash != last
}

// Commit pins the proposal's images and commits it as a new desired
// generation (when it needs one). It retries when the desired state moved
// under it.
func (t *Term) Commit(ctx context.Context, p *Proposal) error {
	select {
	case <-t.ready:
	default:
		return ErrNotReady
	}
	for attempt := 0; attempt < 3; attempt++ {
		needed := true
		t.cfg.Journal.Read(func(st *state.State) { needed = NeedsCommit(st, p) })
		if !needed {
			return nil
		}
		v := t.readView()
		fleets := make([]*state.DesiredFleet, 0, len(p.Specs))
		pins := pinCache{}
		for i := range p.Specs {
			fleets = append(fleets, t.pin(ctx, &p.Specs[i], v.fleets[p.Specs[i].Name], false, pins))
		}
		res, err := t.cfg.Journal.Apply(ctx, &state.SetDesired{BaseGeneration: v.generation, SourceHash: p.SourceHash, Fleets: fleets,
			AutoDrain: p.AutoDrain, At: t.cfg.Now(), Node: p.Proposer, ProposerID: p.ProposerID})
		if err != nil {
			return err
		}
		if res.Error() != nil {
			continue // the base moved under us: read again
		}
		if len(res.Changed) > 0 {
			t.log.Info("desired state committed", zap.Uint64("generation", res.Generation), zap.Strings("fleets", res.Changed),
				zap.String("node", p.Proposer))
		}
		t.cfg.Notify()
		return nil
	}
	return fmt.Errorf("desired state kept moving; will retry")
}

// Repin re-resolves the images of committed fleets: those whose
// resolution failed, and the named ones (an operator's `fleet resolve`
// after a tag moved), without touching their specs.
func (t *Term) Repin(ctx context.Context, force map[string]bool) error {
	v := t.readView()
	var fleets []*state.DesiredFleet
	changed := false
	pins := pinCache{}
	for _, name := range slices.Sorted(maps.Keys(v.fleets)) {
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
	res, err := t.cfg.Journal.Apply(ctx, &state.SetDesired{BaseGeneration: v.generation, Fleets: fleets, At: t.cfg.Now(), Node: t.cfg.Node})
	if err != nil {
		return err
	}
	if err := res.Error(); err != nil {
		return err
	}
	t.cfg.Notify()
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
func (t *Term) pin(ctx context.Context, f *state.FleetSpec, old *state.DesiredFleet, force bool, cache pinCache) *state.DesiredFleet {
	d := &state.DesiredFleet{Spec: *f, TemplateHash: f.TemplateHash()}
	if !force && old != nil && old.ImageDigest != "" && old.ResolveError == "" &&
		old.Spec.Image == f.Image && old.Spec.Provider == f.Provider {
		d.ImageDigest = old.ImageDigest
		return d
	}
	if old != nil {
		d.ImageDigest = old.ImageDigest // keep running the last good image on failure
	}
	resolver, ok := t.cfg.Providers[f.Provider].(ImageResolver)
	if !ok {
		d.ResolveError = fmt.Sprintf("provider %q is not configured on agent %s", f.Provider, t.cfg.Node)
		return d
	}
	key := f.Provider + "\x00" + f.Image
	res, ok := cache[key]
	if !ok {
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		res.digest, res.err = resolver.Resolve(rctx, f.Image)
		cancel()
		cache[key] = res
	}
	if res.err != nil {
		d.ResolveError = clip(res.err.Error(), maxErrorText)
		t.log.Error("image not resolved; the fleet stays on its last pinned image", zap.String("fleet", f.Name),
			zap.String("image", f.Image), zap.String("reason", "image_unresolved"), zap.Error(res.err))
		return d
	}
	d.ImageDigest = res.digest
	if old != nil && old.ImageDigest != "" && old.ImageDigest != res.digest {
		t.log.Info("image pinned", zap.String("fleet", f.Name), zap.String("image", f.Image), zap.String("digest", res.digest), zap.String("previous_digest", old.ImageDigest))
	}
	return d
}

// checkRefs resolves again, without pinning, the image reference of every
// fleet whose provider can tell (RefChecker): a reference that moved to
// other content is reported (event and metric), never rolled out by
// itself; `immutd fleet resolve` or an edit of the fleet file rolls it.
func (t *Term) checkRefs(ctx context.Context) {
	v := t.readView()
	var events []state.Event
	for _, name := range slices.Sorted(maps.Keys(v.fleets)) {
		f := v.fleets[name]
		if f.Unconfigured || f.ImageDigest == "" || f.ResolveError != "" {
			continue
		}
		rc, ok := t.cfg.Providers[f.Spec.Provider].(RefChecker)
		if !ok {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		now, err := rc.CheckRef(rctx, f.Spec.Image)
		cancel()
		if err != nil {
			continue
		}
		if now == f.ImageDigest {
			t.cfg.Metrics.ImageRefMoved(name, false)
			delete(t.moved, name)
			continue
		}
		t.cfg.Metrics.ImageRefMoved(name, true)
		if t.moved[name] == now {
			continue
		}
		t.moved[name] = now
		t.log.Warn("image reference moved; the fleet keeps its pinned image", zap.String("fleet", name), zap.String("image", f.Spec.Image),
			zap.String("pinned", f.ImageDigest), zap.String("now", now), zap.String("reason", string(state.ActionImageRefMoved)))
		events = append(events, state.Event{Time: t.cfg.Now(), Fleet: name, Action: state.ActionImageRefMoved, Reason: "not_rolled", Node: t.cfg.Node,
			Evidence: []string{"reference " + f.Spec.Image, "pinned " + f.ImageDigest, "now resolves to " + now,
				"run `immutd fleet resolve " + name + "` or change the fleet file to roll"}})
	}
	t.record(ctx, events...)
}

// clip cuts s to at most n bytes, at a character boundary.
func clip(s string, n int) string { return cut.To(s, n, "") }
