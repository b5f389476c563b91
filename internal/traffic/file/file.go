// Package file is the target-file traffic backend: a Prometheus file_sd
// JSON file that lists a fleet's admitted instances, one target group per
// instance with labels for fleet, instance id, version and image digest.
// Prometheus, template renderers (consul-template style), and load
// balancers that reload from a file can all consume it. Every change
// rewrites the whole file atomically (a temporary file, fsync, rename),
// so a reader sees the old list or the new one, never half of either.
package file

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/traffic"
)

// maxFileSize bounds what is read back of an existing target file.
const maxFileSize = 16 << 20

// Labels of every target group.
const (
	LabelFleet    = "fleet"
	LabelInstance = "immutd_instance"
	LabelVersion  = "version"
	LabelDigest   = "image_digest"
	// LabelCanary is "true" on a canary of a canary rollout not promoted.
	LabelCanary = "canary"
)

// group is one file_sd target group.
type group struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// Backend writes one fleet's target file.
type Backend struct {
	name, path, fleet string
	log               *zap.Logger

	mu      sync.Mutex
	loaded  bool
	members map[string]traffic.Member
}

var _ traffic.Backend = (*Backend)(nil)

// New returns the backend named name that writes path for fleet. The
// file is read on first use: entries immutd wrote before (a restart, a
// new leader) are kept until a sync says otherwise.
func New(name, path, fleet string, log *zap.Logger) (*Backend, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("file: target file %q must be a clean absolute path", path)
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Backend{name: name, path: path, fleet: fleet, log: log, members: map[string]traffic.Member{}}, nil
}

// Name implements traffic.Backend.
func (b *Backend) Name() string { return fmt.Sprintf("file %q", b.name) }

// Admit implements traffic.Backend: the file lists m once it is written.
func (b *Backend) Admit(_ context.Context, m traffic.Member) error {
	if m.Address == "" {
		return fmt.Errorf("file: admit %s: the instance has no address", m.InstanceID)
	}
	return b.change(func(ms map[string]traffic.Member) { ms[m.InstanceID] = m })
}

// Drain implements traffic.Backend: the file no longer lists m once it
// is written.
func (b *Backend) Drain(_ context.Context, m traffic.Member) error {
	return b.change(func(ms map[string]traffic.Member) { delete(ms, m.InstanceID) })
}

// Connections implements traffic.Backend: a file cannot count them.
func (b *Backend) Connections(context.Context, traffic.Member) (int, bool, error) {
	return 0, false, nil
}

// Remove implements traffic.Backend (Drain did it all).
func (b *Backend) Remove(ctx context.Context, m traffic.Member) error { return b.Drain(ctx, m) }

// Sync implements traffic.Backend.
func (b *Backend) Sync(_ context.Context, admitted []traffic.Member, keep func(string) bool) error {
	return b.change(func(ms map[string]traffic.Member) {
		for id := range ms {
			if !keep(id) {
				delete(ms, id)
			}
		}
		for _, m := range admitted {
			if m.Address != "" {
				ms[m.InstanceID] = m
			}
		}
	})
}

// Close implements traffic.Backend.
func (b *Backend) Close() error { return nil }

// change applies fn to the members and writes the file when the members
// changed, or when it was never written by this backend.
func (b *Backend) change(fn func(map[string]traffic.Member)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.loaded {
		b.load()
	}
	next := make(map[string]traffic.Member, len(b.members))
	for id, m := range b.members {
		next[id] = m
	}
	fn(next)
	if b.loaded && equal(next, b.members) {
		return nil
	}
	if err := b.write(next); err != nil {
		return err
	}
	b.members, b.loaded = next, true
	return nil
}

func equal(a, b map[string]traffic.Member) bool {
	if len(a) != len(b) {
		return false
	}
	for id, m := range a {
		o, ok := b[id]
		if !ok || o.Address != m.Address || o.ImageDigest != m.ImageDigest || o.Version != m.Version || o.Canary != m.Canary {
			return false
		}
	}
	return true
}

// load reads the groups an earlier writer left for this fleet. A file
// that is missing, too large or not a target list starts empty; the
// next write replaces it.
func (b *Backend) load() {
	f, err := os.Open(b.path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		b.log.Warn("target file not readable; it is rewritten", zap.String("path", b.path), zap.Error(err))
		return
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	var groups []group
	if err == nil && len(data) > maxFileSize {
		err = fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	if err == nil {
		err = json.Unmarshal(data, &groups)
	}
	if err != nil {
		b.log.Warn("target file is not a file_sd target list; it is rewritten", zap.String("path", b.path), zap.Error(err))
		return
	}
	for _, g := range groups {
		id := g.Labels[LabelInstance]
		if id == "" || g.Labels[LabelFleet] != b.fleet || len(g.Targets) != 1 {
			continue
		}
		b.members[id] = traffic.Member{Fleet: b.fleet, InstanceID: id, Address: g.Targets[0], ImageDigest: g.Labels[LabelDigest], Version: g.Labels[LabelVersion],
			Canary: g.Labels[LabelCanary] == "true"}
	}
}

// write replaces the file atomically with the members, sorted by id.
func (b *Backend) write(ms map[string]traffic.Member) error {
	ids := make([]string, 0, len(ms))
	for id := range ms {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	groups := make([]group, 0, len(ids))
	for _, id := range ids {
		m := ms[id]
		labels := map[string]string{LabelFleet: b.fleet, LabelInstance: id, LabelVersion: m.Version, LabelDigest: m.ImageDigest}
		if m.Canary {
			labels[LabelCanary] = "true"
		}
		groups = append(groups, group{Targets: []string{m.Address}, Labels: labels})
	}
	data, err := json.MarshalIndent(groups, "", "  ")
	if err != nil {
		return fmt.Errorf("file: encode %s: %w", b.path, err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(b.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(b.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("file: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("file: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if err := os.Rename(tmp.Name(), b.path); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable; a failure here loses nothing
		d.Close()
	}
	return nil
}
