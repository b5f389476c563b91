package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/immutd/immutd/internal/instance"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Instance logs are capped by copy-and-truncate: the instance keeps
// writing its own file with O_APPEND (a pipe read by the agent would
// SIGPIPE it when the agent stops), and when that file exceeds the
// maximum size, its tail is copied to <id>.log.1 and it is truncated to
// zero; O_APPEND writes then go on at the new end. Lines the instance
// writes between the copy and the truncate are lost.

// rotatedSuffix names the previous part of an instance log.
const rotatedSuffix = ".1"

// logSweepInterval is how often Run stats every instance log. It catches
// what file events miss (an overflowed event queue, a log that grew
// while no agent ran, a watch that could not be set up).
const logSweepInterval = time.Second

// maxEventBatch bounds the file events Run collects before it acts, so
// a log written in many small pieces is looked at once per batch, not
// once per write.
const maxEventBatch = 1024

// Run keeps the instance logs within Options.LogMaxSize until ctx ends,
// then returns nil. The agent runs it for the provider's lifetime; every
// agent sharing the directory may run it, rotations are serialized by
// the instance lock. It is one goroutine for all instances: it watches
// the log directory for writes and sweeps it every second.
func (p *Provider) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(p.logDir); err != nil {
			w.Close()
		}
	}
	if err != nil {
		// The sweep alone still enforces the limit, only later.
		p.log.Warn("watch log directory failed, sweeping only", zap.String("path", p.logDir), zapErr(err))
	} else {
		defer w.Close()
		events, watchErrs = w.Events, w.Errors
	}
	tick := time.NewTicker(logSweepInterval)
	defer tick.Stop()
	p.sweepLogs()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			p.sweepLogs()
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			p.log.Warn("log directory watch error", zapErr(err)) // the sweep catches up
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			written := map[string]bool{}
			addLogEvent(written, ev)
		batch:
			for range maxEventBatch {
				select {
				case ev, ok := <-events:
					if !ok {
						break batch
					}
					addLogEvent(written, ev)
				default:
					break batch
				}
			}
			for id := range written {
				p.keepLog(id)
			}
		}
	}
}

// addLogEvent notes the instance whose log an event is about.
func addLogEvent(ids map[string]bool, ev fsnotify.Event) {
	if !ev.Has(fsnotify.Write) && !ev.Has(fsnotify.Create) {
		return
	}
	if id, ok := logID(filepath.Base(ev.Name)); ok {
		ids[id] = true
	}
}

// logID returns the instance id of a log file name ("<id>.log").
func logID(name string) (string, bool) {
	id, ok := strings.CutSuffix(name, ".log")
	if !ok || instance.CheckID(id) != nil {
		return "", false
	}
	return id, true
}

// sweepLogs looks at every instance log.
func (p *Provider) sweepLogs() {
	des, err := os.ReadDir(p.logDir)
	if err != nil {
		p.log.Warn("read log directory failed", zap.String("path", p.logDir), zapErr(err))
		return
	}
	for _, de := range des {
		if id, ok := logID(de.Name()); ok {
			p.keepLog(id)
		}
	}
}

// keepLog rotates the log of id if it is over the limit.
func (p *Provider) keepLog(id string) {
	fi, err := os.Lstat(p.LogPath(id))
	if err != nil || fi.Size() <= p.logMaxSize {
		return
	}
	if err := p.rotateLog(id); err != nil {
		p.log.Warn("rotate instance log failed", zapID(id), zapErr(err))
	}
}

// rotateLog copies the last LogMaxSize/2 bytes of the log of id (all of
// it if smaller) to <id>.log.1, replacing that atomically, and truncates
// the log to zero.
//
// It holds the instance lock, so it never runs while the instance's
// files are removed (it would bring <id>.log.1 back) nor twice at once
// for one log. The lock is only tried: when it is busy (a launch or a
// terminate), the next write event or sweep tries again.
func (p *Provider) rotateLog(id string) error {
	lock, err := p.tryLockInstance(id)
	if errors.Is(err, errLockBusy) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.unlock()
	if _, err := os.Lstat(p.metaPath(id)); errors.Is(err, fs.ErrNotExist) {
		return nil // removed meanwhile, or not an instance of ours
	}
	// O_NOFOLLOW and O_NONBLOCK: the instance may have swapped its log
	// for a symlink or a fifo; neither is followed nor truncated.
	f, err := os.OpenFile(p.LogPath(id), os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", f.Name())
	}
	size := fi.Size()
	if size <= p.logMaxSize {
		return nil
	}
	n := min(size, p.logMaxSize/2)
	if err := copyToFile(p.LogPath(id)+rotatedSuffix, io.NewSectionReader(f, size-n, n)); err != nil {
		return fmt.Errorf("copy tail: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	if h := rotateHook.Load(); h != nil {
		(*h)(id, size, n)
	}
	p.log.Debug("instance log rotated", zapID(id), zap.Int64("size_bytes", size), zap.Int64("kept_bytes", n))
	return nil
}

// copyToFile replaces name with what r yields, through a temporary file
// and a rename, so a reader sees the old or the new content, never a mix.
// Logs are not worth an fsync.
func copyToFile(name string, r io.Reader) error {
	dir, base := filepath.Split(name)
	f, err := os.CreateTemp(dir, "."+base+".*"+tmpSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o640)
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// keepOutput keeps the last part of instance id's log (the rotated part
// first) in the archive of instances that are gone.
func (p *Provider) keepOutput(id string) error {
	var parts []io.Reader
	for _, path := range []string{p.LogPath(id) + rotatedSuffix, p.LogPath(id)} {
		f, err := os.Open(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		defer f.Close()
		parts = append(parts, f)
	}
	if len(parts) == 0 {
		return nil
	}
	return p.kept.Keep(id, parts...)
}

// Logs returns the last max bytes of instance id's output: its log (the
// rotated part first) while it exists, what was kept of it once it is
// gone. An error wrapping fs.ErrNotExist when there is neither.
func (p *Provider) Logs(_ context.Context, id string, max int64) ([]byte, error) {
	if err := instance.CheckID(id); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(p.metaPath(id)); err == nil {
		var out []byte
		for _, path := range []string{p.LogPath(id) + rotatedSuffix, p.LogPath(id)} {
			b, err := os.ReadFile(path)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			out = append(out, b...)
		}
		if int64(len(out)) > max {
			out = out[int64(len(out))-max:]
		}
		return out, nil
	}
	return p.kept.Read(id, max)
}
