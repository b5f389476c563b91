package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/pathmatch"
)

// Inspect reports in-place changes of a running VM, from two places the
// host sees without asking the guest:
//
//   - its root disk: the image's disk is the read-only base of a
//     per-instance overlay, so any write by the guest is drift; QEMU's
//     own counters (QMP query-blockstats on drive "root") give the bytes
//     and writes since the VM started;
//   - its share: the instance's writable filesystem, a directory of the
//     host mounted in the guest at /mnt/instance (virtio-9p). It starts
//     empty, so anything in it that ignore (slash-separated globs, as for
//     the local provider) does not match is drift: "added <path>".
//
// The guest's memory (its initramfs root) is not inspected. A VM whose
// record is gone is instance.ErrGone; one whose QEMU died has no finding
// (List reports it exited).
func (p *Provider) Inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error) {
	f, err := p.inspect(ctx, obs, ignore)
	if err != nil {
		return nil, fmt.Errorf("qemu: inspect %s: %w", obs.ID, err)
	}
	return f, nil
}

func (p *Provider) inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error) {
	if err := instance.CheckID(obs.ID); err != nil {
		return nil, err
	}
	ign, err := pathmatch.Compile(ignore)
	if err != nil {
		return nil, err
	}
	m, err := p.readMeta(obs.ID)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no record: %w", instance.ErrGone)
	}
	if err != nil {
		return nil, err
	}
	if !processAlive(m.PID, m.PIDStart) {
		return nil, nil
	}
	dir := p.instanceDir(m.ID)
	var evidence []string
	if m.Disk {
		ev, err := diskWrites(ctx, dir)
		if err != nil {
			if !processAlive(m.PID, m.PIDStart) {
				return nil, nil // it died while we asked
			}
			return nil, err
		}
		evidence = append(evidence, ev...)
	}
	added, err := shareEntries(ctx, filepath.Join(dir, shareDir), ign)
	if err != nil {
		if _, merr := p.readMeta(obs.ID); errors.Is(merr, os.ErrNotExist) {
			return nil, fmt.Errorf("terminated while inspected: %w", instance.ErrGone)
		}
		return nil, err
	}
	evidence = append(evidence, added...)
	if len(evidence) == 0 {
		return nil, nil
	}
	return &instance.Finding{Kind: instance.DriftMutated, Evidence: instance.CapEvidence(evidence)}, nil
}

// diskWrites is the evidence of writes to the root disk since the VM started.
func diskWrites(ctx context.Context, dir string) ([]string, error) {
	stats, err := queryBlockStats(ctx, dir)
	if err != nil {
		return nil, err
	}
	for _, s := range stats {
		if s.Device != "root" {
			continue
		}
		st := s.Stats
		if st.WrBytes == 0 && st.WrOperations == 0 && st.UnmapBytes == 0 {
			return nil, nil
		}
		return []string{fmt.Sprintf("root disk written: %d bytes in %d writes, up to offset %d, %d bytes discarded, since the VM started (QMP query-blockstats)",
			st.WrBytes, st.WrOperations, st.WrHighest, st.UnmapBytes)}, nil
	}
	return nil, errors.New("qmp query-blockstats has no drive \"root\"")
}

// shareEntries lists what the guest put in its share, never following a
// symlink, as "added <path>".
func shareEntries(ctx context.Context, root string, ign *pathmatch.Set) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == root {
			if !d.IsDir() {
				return fmt.Errorf("share %s is no longer a directory", root)
			}
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if ign.Match(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		out = append(out, "added "+rel)
		if len(out) > instance.MaxEvidence {
			return filepath.SkipAll
		}
		return nil
	})
	return out, err
}
