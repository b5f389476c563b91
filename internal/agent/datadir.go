package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/api"
)

// dataDirCheckInterval is how often the agent checks that it can write
// its data directory.
const dataDirCheckInterval = 5 * time.Second

// checkDataDir writes, syncs and removes a small file in the data
// directory and reads the free space of its file system. When raft cannot
// write, the leader steps down and no agent leads, which status would
// otherwise report only as "no quorum": this check names the real cause.
func checkDataDir(dir string, now time.Time) api.DataDirStatus {
	st := api.DataDirStatus{Path: dir, At: now}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err == nil {
		st.Free = fs.Bavail * uint64(fs.Bsize)
	}
	p := filepath.Join(dir, ".write-check")
	err := func() error {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, werr := f.Write([]byte("immutd checks that it can write here\n"))
		serr := f.Sync()
		cerr := f.Close()
		os.Remove(p)
		for _, e := range []error{werr, serr, cerr} {
			if e != nil {
				return e
			}
		}
		return nil
	}()
	if err != nil {
		st.Error = fmt.Sprintf("cannot write the data directory %s: %v", dir, unwrapPath(err))
		return st
	}
	st.Writable = true
	return st
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// watchDataDir checks the data directory periodically and reports
// changes in logs, status and metrics.
func (a *Agent) watchDataDir(ctx context.Context) error {
	t := time.NewTicker(dataDirCheckInterval)
	defer t.Stop()
	for {
		st := checkDataDir(a.cfg.DataDir, time.Now())
		a.mu.Lock()
		prev := a.dataDir
		a.dataDir = st
		a.mu.Unlock()
		writable := 0.0
		if st.Writable {
			writable = 1
		}
		a.m.dataDirWritable.Set(writable)
		a.m.dataDirFree.Set(float64(st.Free))
		switch {
		case !st.Writable && (prev.Writable || prev.At.IsZero()):
			a.log.Error("data directory not writable: raft cannot persist, so nothing is launched or terminated until it is",
				zap.String("dir", a.cfg.DataDir), zap.Uint64("free_bytes", st.Free), zap.String("reason", "data_dir_not_writable"), zap.String("error", st.Error))
		case st.Writable && !prev.Writable && !prev.At.IsZero():
			a.log.Info("data directory writable again", zap.String("dir", a.cfg.DataDir), zap.Uint64("free_bytes", st.Free))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// DataDir is the last check of the data directory.
func (a *Agent) dataDirStatus() api.DataDirStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dataDir
}
