package agent

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/leader"
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
	return a.onLeader(ctx, http.MethodPost, "/cluster/v2/propose", p, nil, func() error { return a.commitOwn(ctx, p) })
}

// commitOwn commits this agent's own proposal on the leader, waiting for
// the term to be ready.
func (a *Agent) commitOwn(ctx context.Context, p *Proposal) error {
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
var errNotReady = leader.ErrNotReady

// commitProposal validates a proposal and has the term commit it. Leader
// only.
func (a *Agent) commitProposal(ctx context.Context, p *Proposal) error {
	t := a.currentTerm()
	if t == nil {
		return errNotReady
	}
	specs, err := a.parseProposal(p)
	if err != nil {
		return err
	}
	a.mu.Lock()
	autoDrain := a.autoDrain
	a.mu.Unlock()
	return t.Commit(ctx, &leader.Proposal{Specs: specs, SourceHash: p.Hash, StartHash: p.StartHash, ProposerID: p.ProposerID,
		Proposer: p.ProposerName, AutoDrain: autoDrain})
}

// Drain starts draining an unconfigured fleet.
func (a *Agent) Drain(ctx context.Context, fleet string) error {
	if err := checkFleetName(fleet); err != nil {
		return err
	}
	return a.onLeader(ctx, http.MethodPost, "/cluster/v1/drain", fleetRequest{Fleet: fleet}, nil, func() error {
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
	})
}

// Retry clears a fleet's launch failures: its launch backoff and cap
// start afresh.
func (a *Agent) Retry(ctx context.Context, fleet string) error {
	if err := checkFleetName(fleet); err != nil {
		return err
	}
	return a.onLeader(ctx, http.MethodPost, "/cluster/v1/retry", fleetRequest{Fleet: fleet}, nil, func() error {
		res, err := a.node.Apply(ctx, &state.RetryFleet{Fleet: fleet, At: time.Now(), Node: a.cfg.NodeName})
		if err != nil {
			return err
		}
		if err := res.Error(); err != nil {
			return err
		}
		a.log.Info("launch failures cleared", zap.String("fleet", fleet), zap.String("reason", "operator"))
		a.Wake()
		return nil
	})
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
