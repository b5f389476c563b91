package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
)

// List reports every instance the provider has a record of, sorted by id.
// A VM is running while its QEMU process (pid and start time) is alive;
// otherwise it is exited, with what its console last said about why.
func (p *Provider) List(ctx context.Context) ([]instance.Observed, error) {
	des, err := os.ReadDir(p.instancesDir)
	if err != nil {
		return nil, fmt.Errorf("qemu: list: %w", err)
	}
	out := make([]instance.Observed, 0, len(des))
	for _, de := range des {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("qemu: list: %w", err)
		}
		id := de.Name()
		if instance.CheckID(id) != nil || !de.IsDir() {
			continue
		}
		if obs, ok := p.listOne(id); ok {
			out = append(out, obs)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (p *Provider) listOne(id string) (instance.Observed, bool) {
	m, err := p.readMeta(id)
	if errors.Is(err, os.ErrNotExist) {
		return instance.Observed{}, false // being launched or removed
	}
	if err != nil {
		p.log.Warn("unreadable vm record", zapID(id), zap.Error(err))
		return instance.Observed{ID: id, Phase: instance.Exited, ExitReason: "unreadable record: " + err.Error(), Location: p.instanceDir(id)}, true
	}
	obs := p.observed(m)
	if m.PID == 0 {
		// Recorded without a pid: a launch in progress holds the lock;
		// otherwise it was interrupted, before or after QEMU started.
		if l, err := p.tryLock(id); err == nil {
			obs = p.adoptInterrupted(m)
			l.unlock()
		}
		return obs, true
	}
	if !processAlive(m.PID, m.PIDStart) {
		obs.Phase, obs.ExitReason = instance.Exited, p.exitReason(m)
	}
	return obs, true
}

// adoptInterrupted reports a record whose launch was interrupted (the
// caller holds the instance's lock). When the launch got as far as
// starting QEMU, the VM runs and occupies capacity: its pid is recorded
// from the pid file, or, while QEMU still daemonizes and has written
// none, the VM is reported running and adopted by a later List. Only a
// launch cut before QEMU started is exited.
func (p *Provider) adoptInterrupted(m meta) instance.Observed {
	dir := p.instanceDir(m.ID)
	if pid, start, err := readPIDFile(dir); err == nil && processAlive(pid, start) {
		m.PID, m.PIDStart = pid, start
		if err := writeMeta(dir, m); err != nil {
			p.log.Warn("record the pid of an interrupted launch's vm failed", zapID(m.ID), zap.Error(err))
		} else {
			p.log.Info("vm of an interrupted launch adopted", zapID(m.ID), zap.Int("pid", pid))
		}
		return p.observed(m)
	}
	obs := p.observed(m)
	if len(instanceQEMUs(dir)) == 0 {
		obs.Phase, obs.ExitReason = instance.Exited, "launch interrupted before QEMU started"
	}
	return obs
}

// consoleTail is how much of the end of a console log exitReason reads.
const consoleTail = 16 << 10

// exitReason says how a VM whose QEMU is gone ended, from the last line
// its init or kernel wrote about it on the console.
func (p *Provider) exitReason(m meta) string {
	reason := fmt.Sprintf("qemu process %d exited", m.PID)
	f, err := os.Open(p.LogPath(m.ID))
	if err != nil {
		return reason
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > consoleTail {
		_, _ = f.Seek(-consoleTail, io.SeekEnd)
	}
	tail, _ := io.ReadAll(io.LimitReader(f, consoleTail))
	var last string
	for _, line := range bytes.Split(tail, []byte("\n")) {
		s := strings.TrimSpace(string(line))
		switch {
		case strings.HasPrefix(s, "vminit: ") && !strings.HasPrefix(s, "vminit: powering off"):
			last = s
		case strings.Contains(s, "Kernel panic"):
			last = s
		}
	}
	if last != "" {
		if len(last) > 300 {
			last = last[:300] + "..."
		}
		return reason + "; console: " + last
	}
	return reason + " (its console says nothing about why: killed from outside, or QEMU failed)"
}
