package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/backup"
)

// GET /v1/snapshot: a snapshot file (internal/backup) of the replicated
// state, taken on the leader. It holds the whole state, so unlike every
// other read it needs the API token.

// SnapshotSource is what a Backend implements to serve snapshots.
type SnapshotSource interface {
	// Snapshot returns a whole snapshot file, taken on the leader (a
	// follower fetches it from the leader). An error wrapping
	// ErrUnavailable means no leader could take it now.
	Snapshot(ctx context.Context) (*SnapshotStream, error)
}

// SnapshotStream is a snapshot file of Size bytes; the reader of Body
// closes it.
type SnapshotStream struct {
	Size int64
	Body io.ReadCloser
}

// snapshotRoutes adds GET /v1/snapshot.
func (s *Server) snapshotRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/snapshot", s.auth(func(w http.ResponseWriter, r *http.Request) {
		src, ok := s.b.(SnapshotSource)
		if !ok {
			writeJSON(w, http.StatusNotImplemented, Error{Error: "this agent cannot take snapshots"})
			return
		}
		snap, err := src.Snapshot(r.Context())
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrUnavailable) {
				code = http.StatusServiceUnavailable
			}
			writeJSON(w, code, Error{Error: "snapshot: " + err.Error()})
			return
		}
		defer snap.Body.Close()
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(snap.Size, 10))
		h.Set("Content-Disposition", `attachment; filename="immutd.snap"`)
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		n, err := io.Copy(w, snap.Body)
		if err != nil {
			s.log.Warn("snapshot not sent whole", zap.Int64("sent_bytes", n), zap.Int64("size_bytes", snap.Size), zap.String("remote", r.RemoteAddr), zap.Error(err))
			return
		}
		s.log.Info("snapshot sent", zap.Int64("size_bytes", n), zap.String("remote", r.RemoteAddr))
	}))
}

// Snapshot fetches a snapshot file (GET /v1/snapshot, which needs the
// token) and writes it to w; it returns the bytes written. It bounds what
// it reads to backup.MaxFileSize; the caller verifies the file. Only ctx
// bounds how long it takes.
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (int64, error) {
	const path = "/v1/snapshot"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return 0, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	hc := *c.hc
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", c.base+path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e Error
		if json.Unmarshal(answer, &e) == nil && e.Error != "" {
			return 0, fmt.Errorf("GET %s: %s: %s", path, resp.Status, e.Error)
		}
		return 0, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	limit := int64(backup.MaxFileSize)
	if resp.ContentLength > limit {
		return 0, fmt.Errorf("GET %s: the snapshot is %d bytes, more than the limit of %d", path, resp.ContentLength, limit)
	}
	n, err := io.Copy(w, io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return n, fmt.Errorf("GET %s: after %d bytes: %w", path, n, err)
	}
	if n > limit {
		return n, fmt.Errorf("GET %s: the snapshot exceeds the limit of %d bytes", path, limit)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("GET %s: the connection ended after %d of %d bytes", path, n, resp.ContentLength)
	}
	return n, nil
}
