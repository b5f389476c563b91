package qemu

import (
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
)

// logSweep is how often Run looks at the console logs.
const logSweep = time.Second

// Run keeps the console logs within bounds until ctx ends: a log above
// LogMaxSize is rotated (its last half goes to <id>.log.1 and the log is
// truncated; QEMU appends, so it writes on at the new end), and the logs
// of VMs that are gone are kept for LogMaxAge, at most LogKeep of them,
// oldest removed first. A VM's console is therefore at most about 1.5
// times LogMaxSize on disk, plus what it writes within a sweep.
func (p *Provider) Run(ctx context.Context) error {
	t := time.NewTicker(logSweep)
	defer t.Stop()
	for {
		p.sweepLogs()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Provider) sweepLogs() {
	des, err := os.ReadDir(p.logDir)
	if err != nil {
		return
	}
	type gone struct {
		id  string
		mod time.Time
	}
	var old []gone
	for _, de := range des {
		id, ok := strings.CutSuffix(de.Name(), ".log")
		if !ok {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		if _, err := os.Lstat(p.instanceDir(id)); err == nil {
			if fi.Size() > p.logMaxSize {
				if err := p.rotate(id); err != nil {
					p.log.Warn("rotate vm console log failed", zapID(id), zap.Error(err))
				}
			}
			continue
		}
		old = append(old, gone{id, fi.ModTime()})
	}
	sort.Slice(old, func(i, j int) bool { return old[i].mod.After(old[j].mod) })
	for i, g := range old {
		if i >= p.logKeep || time.Since(g.mod) > p.logMaxAge {
			_ = os.Remove(p.LogPath(g.id))
			_ = os.Remove(p.LogPath(g.id) + ".1")
		}
	}
}

// rotate copies the last half of the maximum of a console log to
// <id>.log.1 and truncates the log.
func (p *Provider) rotate(id string) error {
	path := p.LogPath(id)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	keep := p.logMaxSize / 2
	if fi, err := f.Stat(); err == nil && fi.Size() > keep {
		if _, err := f.Seek(-keep, io.SeekEnd); err != nil {
			return err
		}
	}
	tmp := path + ".1.tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, f)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path+".1"); err != nil {
		return err
	}
	return f.Truncate(0)
}

// Logs returns the last max bytes of VM id's console (the rotated part
// first), also after the VM is gone.
func (p *Provider) Logs(_ context.Context, id string, max int64) ([]byte, error) {
	var out []byte
	for _, path := range []string{p.LogPath(id) + ".1", p.LogPath(id)} {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	if out == nil {
		return nil, os.ErrNotExist
	}
	if int64(len(out)) > max {
		out = out[int64(len(out))-max:]
	}
	return out, nil
}
