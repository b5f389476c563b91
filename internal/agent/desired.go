package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// resolveRetry is how often fleets whose image could not be resolved are
// tried again.
const resolveRetry = 10 * time.Second

// proposeDesired commits the latest valid fleet set as a new desired
// generation when it differs from the committed one. Images are pinned
// here: a fleet whose image reference did not change keeps its committed
// digest, so neither an edited bundle nor a moved tag leaks into a running
// fleet; only a change of the fleet file (or an explicit re-resolve) pins
// again.
func (t *term) proposeDesired(ctx context.Context) error {
	a := t.a
	a.mu.Lock()
	set, hash, autoDrain := a.fleets, a.fleetsHash, a.autoDrain
	a.mu.Unlock()
	if set == nil {
		return nil
	}
	v := a.readView()
	retry := false
	for _, f := range v.fleets {
		if f.ResolveError != "" && !f.Unconfigured {
			retry = true
		}
	}
	if hash == v.sourceHash && !(retry && time.Since(t.lastResolveTry) >= resolveRetry) {
		return nil
	}
	t.lastResolveTry = time.Now()
	fleets := make([]*state.DesiredFleet, 0, len(set.Fleets))
	for _, f := range set.Fleets {
		fleets = append(fleets, t.pin(ctx, f, v.fleets[f.Name], false))
	}
	res, err := a.node.Apply(ctx, &state.SetDesired{BaseGeneration: v.generation, SourceHash: hash, Fleets: fleets,
		AutoDrain: autoDrain, At: time.Now(), Node: a.cfg.NodeName})
	if err != nil {
		return err
	}
	if err := res.Error(); err != nil {
		a.Wake() // the base moved under us: read again and retry
		return err
	}
	if len(res.Changed) > 0 {
		a.log.Info("desired state committed", zap.Uint64("generation", res.Generation), zap.Strings("fleets", res.Changed))
		for _, f := range fleets {
			a.m.initFleet(f.Spec.Name)
		}
	}
	return nil
}

// pin builds a fleet's desired state, resolving its image unless the
// committed one can be kept.
func (t *term) pin(ctx context.Context, f *config.Fleet, old *state.DesiredFleet, force bool) *state.DesiredFleet {
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
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	digest, err := resolver.Resolve(rctx, f.Image)
	if err != nil {
		d.ResolveError = err.Error()
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
	if !a.node.IsLeader() {
		return fmt.Errorf("this agent is not the leader; ask the leader")
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
