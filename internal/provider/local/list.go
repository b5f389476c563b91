package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/immutd/immutd/internal/instance"
)

// List reports every instance the provider has metadata for, sorted by
// id. An instance is running while its recorded process (pid and start
// time) is alive and not a zombie; otherwise it is exited, with the
// recorded exit status or "process gone". Metadata that cannot be read
// makes that one instance exited ("unreadable metadata: ..."), not the
// whole List fail; List fails only when the metadata directory or /proc
// cannot be read.
func (p *Provider) List(ctx context.Context) ([]instance.Observed, error) {
	des, err := os.ReadDir(p.metaDir)
	if err != nil {
		return nil, fmt.Errorf("local: list: %w", err)
	}
	out := make([]instance.Observed, 0, len(des))
	for _, de := range des {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("local: list: %w", err)
		}
		name := de.Name()
		id, ok := strings.CutSuffix(name, ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		obs, found, err := p.listOne(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("local: list: %w", err)
		}
		if found {
			out = append(out, obs)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	// Instances removed behind this provider's back (by another agent
	// sharing the directory) lose their drift cache here.
	listed := make(map[string]bool, len(out))
	for _, o := range out {
		listed[o.ID] = true
	}
	p.drift.retain(listed)
	return out, nil
}

func (p *Provider) listOne(ctx context.Context, id string) (instance.Observed, bool, error) {
	if err := instance.CheckID(id); err != nil {
		// Not a file this provider writes; nothing it could terminate.
		p.log.Warn("ignoring foreign file in metadata directory", zapID(id), zapErr(err))
		return instance.Observed{}, false, nil
	}
	m, err := p.readMeta(id)
	if errors.Is(err, fs.ErrNotExist) {
		return instance.Observed{}, false, nil // terminated meanwhile
	}
	if err != nil {
		p.log.Warn("unreadable instance metadata", zapID(id), zapErr(err))
		return p.unreadableObserved(id, err), true, nil
	}
	if m.PID == 0 && m.ExitReason == "" {
		// A launch in progress, or one interrupted between start and
		// record: wait for the launch, then look for its process.
		lock, err := p.lockInstance(ctx, id)
		if err != nil {
			return instance.Observed{}, false, err
		}
		m, err = p.readMeta(id)
		if err == nil {
			p.recoverPID(m)
		}
		lock.unlock()
		if errors.Is(err, fs.ErrNotExist) {
			return instance.Observed{}, false, nil
		}
		if err != nil {
			p.log.Warn("unreadable instance metadata", zapID(id), zapErr(err))
			return p.unreadableObserved(id, err), true, nil
		}
	}
	obs, err := p.observe(m)
	if err != nil {
		return instance.Observed{}, false, err
	}
	return obs, true, nil
}
