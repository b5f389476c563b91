package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/backup"
	"github.com/immutd/immutd/internal/cluster"
	"github.com/immutd/immutd/internal/state"
)

// Snapshots (`immutd snapshot save`): the leader reads the replicated
// state after a barrier, verifies its leadership, and seals it into a
// snapshot file (internal/backup). A follower asked for one fetches it
// from the leader over the cluster port, whose peers are authenticated
// members. Restores are offline (cluster.RestoreOffline), never through a
// running agent.

// snapshotBarrier bounds the barrier before a snapshot is read.
const snapshotBarrier = 30 * time.Second

var _ api.SnapshotSource = (*Agent)(nil)

// Snapshot implements api.SnapshotSource.
func (a *Agent) Snapshot(ctx context.Context) (*api.SnapshotStream, error) {
	deadline := time.Now().Add(rpcHoldTimeout)
	for {
		if a.node.IsLeader() {
			s, err := a.snapshotHere()
			if !errors.Is(err, cluster.ErrNotLeader) {
				return s, err
			}
		}
		addr, _ := a.node.Leader()
		var err error
		if addr == "" || a.node.IsLeader() {
			err = fmt.Errorf("no leader: the cluster has no quorum: %w", api.ErrUnavailable)
		} else {
			var s *api.SnapshotStream
			if s, err = a.snapshotFrom(ctx, addr); err == nil {
				return s, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// snapshotHere takes a snapshot on this agent, the leader.
func (a *Agent) snapshotHere() (*api.SnapshotStream, error) {
	start := time.Now()
	body, index, term, err := a.node.EncodeState(snapshotBarrier)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, api.ErrUnavailable)
	}
	h := backup.Header{ImmutdVersion: Version, StateFormat: state.SnapshotFormat, Index: index, Term: term,
		CreatedAt: time.Now().UTC(), Node: a.cfg.NodeName}
	head, err := backup.Seal(&h, body)
	if err != nil {
		return nil, err
	}
	a.log.Info("snapshot taken", zap.Uint64("index", index), zap.Uint64("term", term), zap.Int64("size_bytes", h.Size),
		zap.String("sha256", h.SHA256), zap.Float64("duration_seconds", time.Since(start).Seconds()))
	return &api.SnapshotStream{Size: int64(len(head)) + h.Size, Body: io.NopCloser(io.MultiReader(bytes.NewReader(head), bytes.NewReader(body)))}, nil
}

// snapshotFrom fetches the leader's snapshot from its cluster address.
// Only ctx bounds the transfer.
func (a *Agent) snapshotFrom(ctx context.Context, addr string) (*api.SnapshotStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/cluster/v1/snapshot", nil)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: a.rpcClient.Transport}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("snapshot from the leader %s: %v: %w", addr, err, api.ErrUnavailable)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("snapshot from the leader %s: %s: %s: %w", addr, resp.Status, clip(string(bytes.TrimSpace(b)), 512), api.ErrUnavailable)
	}
	if resp.ContentLength < 0 || resp.ContentLength > int64(backup.MaxFileSize) {
		resp.Body.Close()
		return nil, fmt.Errorf("snapshot from the leader %s: size %d is unknown or above the limit of %d", addr, resp.ContentLength, backup.MaxFileSize)
	}
	return &api.SnapshotStream{Size: resp.ContentLength, Body: resp.Body}, nil
}

// snapshotRPC adds GET /cluster/v1/snapshot to the agent-to-agent mux:
// the leader's snapshot for a follower that was asked for one.
func (a *Agent) snapshotRPC(mux *http.ServeMux) {
	mux.HandleFunc("GET /cluster/v1/snapshot", func(w http.ResponseWriter, r *http.Request) {
		if a.notLeader(w) {
			return
		}
		s, err := a.snapshotHere()
		if err != nil {
			code := http.StatusServiceUnavailable
			if errors.Is(err, cluster.ErrNotLeader) {
				code = http.StatusMisdirectedRequest
			}
			writeRPC(w, code, rpcError{Error: err.Error()})
			return
		}
		defer s.Body.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(s.Size, 10))
		w.WriteHeader(http.StatusOK)
		if n, err := io.Copy(w, s.Body); err != nil {
			a.log.Warn("snapshot not sent whole to a follower", zap.Int64("sent_bytes", n), zap.Int64("size_bytes", s.Size), zap.Error(err))
		}
	})
}
