package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// pollInterval is how often Terminate checks whether the processes of an
// instance are gone.
const pollInterval = 20 * time.Millisecond

// killWait bounds the wait for processes to vanish after SIGKILL.
const killWait = 10 * time.Second

// Terminate stops the instance and deletes its root, logs, port
// reservation and metadata. A root that was replaced by a symlink loses
// the link, never the target.
// It sends SIGTERM to the instance's session, waits up to grace for
// every process in it to exit, then sends SIGKILL and waits for them to
// be gone. Terminating an unknown id succeeds. When ctx ends first,
// Terminate returns its error and leaves the instance recorded, so a
// retry finishes the job.
func (p *Provider) Terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := p.terminate(ctx, id, grace); err != nil {
		return fmt.Errorf("local: terminate %s: %w", id, err)
	}
	return nil
}

func (p *Provider) terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := instance.CheckID(id); err != nil {
		return err
	}
	lock, err := p.lockInstance(ctx, id)
	if err != nil {
		return err
	}
	defer lock.unlock()

	m, err := p.readMeta(id)
	var pid, port int
	var ticks uint64
	switch {
	case err == nil:
		p.recoverPID(m)
		pid, ticks, port = m.PID, m.StartTicks, m.Port
	case errors.Is(err, fs.ErrNotExist):
		// Unknown id, or a removal that got as far as the metadata:
		// remove whatever else is left.
		return p.removeInstanceFiles(id, 0)
	default:
		// The metadata is damaged; find the process by its root.
		p.log.Warn("unreadable instance metadata", zapID(id), zapErr(err))
		if st, ok := findSessionLeaderIn(p.procRoot, p.instanceRoot(id)); ok {
			pid, ticks = st.PID, st.StartTicks
		}
	}
	signal := ""
	if pid > 0 {
		signal, err = p.stop(ctx, id, pid, ticks, grace)
		if err != nil {
			return err
		}
	}
	if err := p.removeInstanceFiles(id, port); err != nil {
		return fmt.Errorf("remove files: %w", err)
	}
	fleet := ""
	if m != nil {
		fleet = m.Fleet
	}
	p.log.Info("instance terminated", zapID(id), zap.String("fleet", fleet), zapPID(pid),
		zap.String("stop_signal", signal))
	return nil
}

// stop ends the session pid leads (the instance's process and all it
// started) and returns the signal that did it: "SIGTERM", "SIGKILL", or
// "" when nothing was running.
//
// The pid is trusted only with its start time. A pid that is alive with
// another start time was reused, which the kernel does only once no
// process group or session of that number is left, so nothing of ours
// remains. A pid with no process may still name our session if the
// leader died before its children; those children are ours.
func (p *Provider) stop(ctx context.Context, id string, pid int, ticks uint64, grace time.Duration) (string, error) {
	st, err := readProcStat(p.procRoot, pid)
	switch {
	case err == nil && st.StartTicks != ticks:
		return "", nil
	case err != nil && !errors.Is(err, errNoProcess):
		return "", err
	}
	members, err := sessionMembers(p.procRoot, pid)
	if err != nil {
		return "", err
	}
	if len(members) == 0 {
		return "", nil
	}
	p.signal(pid, members, unix.SIGTERM)
	gone, err := p.waitGone(ctx, id, pid, grace)
	if err != nil || gone {
		return "SIGTERM", err
	}
	members, err = sessionMembers(p.procRoot, pid)
	if err != nil {
		return "", err
	}
	p.signal(pid, members, unix.SIGKILL)
	gone, err = p.waitGone(ctx, id, pid, killWait)
	if err != nil {
		return "SIGKILL", err
	}
	if !gone {
		return "SIGKILL", fmt.Errorf("processes of session %d still alive %s after SIGKILL", pid, killWait)
	}
	return "SIGKILL", nil
}

// signal sends sig to the process group sid and to every member of the
// session, which may have made groups of its own.
func (p *Provider) signal(sid int, members []procStat, sig unix.Signal) {
	if err := unix.Kill(-sid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		p.log.Warn("signal process group failed", zapPID(sid), zap.String("signal", unix.SignalName(sig)), zapErr(err))
	}
	for _, m := range members {
		if m.PGrp != sid {
			_ = unix.Kill(m.PID, sig)
		}
	}
}

// waitGone polls until no live process is left in session sid (true),
// until d has passed (false), or until ctx ends (its error).
func (p *Provider) waitGone(ctx context.Context, id string, sid int, d time.Duration) (bool, error) {
	var done <-chan struct{}
	p.mu.Lock()
	if c := p.children[id]; c != nil && c.pid == sid {
		done = c.done
	}
	p.mu.Unlock()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		members, err := sessionMembers(p.procRoot, sid)
		if err != nil {
			return false, err
		}
		if len(members) == 0 {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-deadline.C:
			members, err := sessionMembers(p.procRoot, sid)
			return err == nil && len(members) == 0, err
		case <-done:
			done = nil // the leader was reaped: look again now
		case <-tick.C:
		}
	}
}
