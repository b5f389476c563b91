package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// exitReason reads a wait status exactly as os.ProcessState.String does
// ("exit status 1", "signal: killed", "... (core dumped)"), which is how
// the provider reported exits when it waited through exec.Cmd.
func exitReason(ws syscall.WaitStatus) string {
	res := ""
	switch {
	case ws.Exited():
		res = "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		res = "signal: " + ws.Signal().String()
	case ws.Stopped():
		res = "stop signal: " + ws.StopSignal().String()
		if ws.StopSignal() == syscall.SIGTRAP && ws.TrapCause() != 0 {
			res += " (trap " + strconv.Itoa(ws.TrapCause()) + ")"
		}
	case ws.Continued():
		res = "continued"
	}
	if ws.CoreDump() {
		res += " (core dumped)"
	}
	return res
}

// The provider waits for the processes it started with one goroutine for
// all of them, not one blocked in exec.Cmd.Wait each (which also pins an
// OS thread each while the process runs). Each child's pidfd
// (pidfd_open(2), readable once the process has exited) is in one epoll
// set; the goroutine waits on the set, reaps a child whose pidfd is
// readable with wait4(WNOHANG), and ends when no child is left. The next
// launch starts it again.
//
// Go's own handle on a child (exec.Cmd's os.Process and its pidfd) is
// released right after the start, so nothing else in the agent waits for
// it: wait4 on the pid is safe, since the pid of an unreaped child cannot
// be reused, and the agent never waits for "any child".
type reaper struct {
	mu      sync.Mutex
	running bool            // the goroutine runs; ep is its epoll set
	ep      int             //
	waiting map[int32]*wait // by pidfd
}

// wait is one child the reaper waits for.
type wait struct {
	id    string
	c     *child
	ticks uint64 // start time of the process, as recorded in the metadata
	pidfd int
}

// reapChild arranges for the child c (instance id, started as cmd) to be
// reaped and its exit recorded (see exited). Without pidfds (a kernel
// before 5.3, a seccomp filter) it falls back on a goroutine that waits
// for this child alone.
func (p *Provider) reapChild(id string, cmd *exec.Cmd, c *child, ticks uint64) {
	// The child is not reaped yet (nothing waits for it), so its pid is
	// still its own.
	fd, err := unix.PidfdOpen(c.pid, 0)
	if err == nil {
		err = p.reaper.add(p, &wait{id: id, c: c, ticks: ticks, pidfd: fd})
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		p.log.Warn("cannot watch the process through a pidfd, waiting for it in a goroutine of its own",
			zapID(id), zapPID(c.pid), zapErr(err))
		go func() {
			werr := cmd.Wait()
			reason := ""
			if cmd.ProcessState != nil {
				reason = cmd.ProcessState.String()
			} else if werr != nil {
				reason = werr.Error()
			}
			p.exited(id, c, ticks, reason)
		}()
		return
	}
	// Go's handle would be a second pidfd, and its Wait a goroutine.
	_ = cmd.Process.Release()
}

// add puts w into the epoll set, starting the reaper's goroutine if it
// does not run.
func (r *reaper) add(p *Provider, w *wait) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return fmt.Errorf("epoll_create1: %w", err)
		}
		r.ep = ep
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(w.pidfd)}
	if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, w.pidfd, &ev); err != nil {
		if !r.running {
			unix.Close(r.ep)
		}
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	if r.waiting == nil {
		r.waiting = map[int32]*wait{}
	}
	r.waiting[int32(w.pidfd)] = w
	if !r.running {
		r.running = true
		go p.reapLoop(r.ep)
	}
	return nil
}

// remove takes the child of pidfd fd out of the epoll set and closes fd.
func (r *reaper) remove(fd int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = unix.EpollCtl(r.ep, unix.EPOLL_CTL_DEL, int(fd), nil)
	unix.Close(int(fd))
	delete(r.waiting, fd)
}

// reapLoop is the reaper's goroutine: it reaps the children whose pidfd
// turns readable until none is left, then closes the epoll set ep.
func (p *Provider) reapLoop(ep int) {
	r := &p.reaper
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(ep, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// Not expected (ep is valid and ours): wait for each child
			// left in a goroutine of its own rather than lose its exit.
			p.log.Error("waiting for instance processes failed, waiting for each in a goroutine", zapErr(err))
			r.mu.Lock()
			left := make([]*wait, 0, len(r.waiting))
			for _, w := range r.waiting {
				left = append(left, w)
			}
			r.mu.Unlock()
			for _, w := range left {
				r.remove(int32(w.pidfd))
				go p.reapBlocking(w)
			}
			r.mu.Lock()
			r.running = false
			unix.Close(ep)
			r.mu.Unlock()
			return
		}
		for _, ev := range events[:n] {
			r.mu.Lock()
			w := r.waiting[ev.Fd]
			r.mu.Unlock()
			if w != nil {
				p.reapReady(w)
			}
		}
		r.mu.Lock()
		if len(r.waiting) == 0 {
			r.running = false
			unix.Close(ep)
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
	}
}

// reapReady reaps the child of w, whose pidfd is readable: it has exited.
func (p *Provider) reapReady(w *wait) {
	var ws syscall.WaitStatus
	pid, err := wait4(w.c.pid, &ws, syscall.WNOHANG)
	if err == nil && pid == 0 {
		// Readable but not waitable: not expected. Do not spin on it.
		p.reaper.remove(int32(w.pidfd))
		go p.reapBlocking(w)
		return
	}
	p.reaper.remove(int32(w.pidfd))
	p.exited(w.id, w.c, w.ticks, waitReason(ws, err))
}

// reapBlocking waits for the child of w in the calling goroutine; w is
// no longer in the epoll set.
func (p *Provider) reapBlocking(w *wait) {
	var ws syscall.WaitStatus
	_, err := wait4(w.c.pid, &ws, 0)
	p.exited(w.id, w.c, w.ticks, waitReason(ws, err))
}

// wait4 is syscall.Wait4 for one pid, retried on EINTR.
func wait4(pid int, ws *syscall.WaitStatus, options int) (int, error) {
	for {
		wpid, err := syscall.Wait4(pid, ws, options, nil)
		if !errors.Is(err, syscall.EINTR) {
			return wpid, err
		}
	}
}

// waitReason is the exit reason of a wait that returned ws and err, read
// as exec.Cmd.Wait's result was.
func waitReason(ws syscall.WaitStatus, err error) string {
	if err != nil {
		return os.NewSyscallError("wait4", err).Error()
	}
	return exitReason(ws)
}

// Watch calls notify each time a process this provider started exits,
// once its exit is recorded, until ctx ends; the leader then runs a pass
// at once instead of at its next periodic one. It hears only of this
// provider's own children: the exit of an instance adopted after an agent
// restart, or launched by another agent sharing the directory, is seen
// by the periodic pass, which stays the source of truth. Watch costs no
// goroutine beyond the caller's.
func (p *Provider) Watch(ctx context.Context, notify func()) {
	key := new(int)
	p.mu.Lock()
	if p.watchers == nil {
		p.watchers = map[*int]func(){}
	}
	p.watchers[key] = notify
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
	delete(p.watchers, key)
	p.mu.Unlock()
}

// notifyWatchers calls the notify funcs of every Watch in progress.
func (p *Provider) notifyWatchers() {
	p.mu.Lock()
	fns := make([]func(), 0, len(p.watchers))
	for _, f := range p.watchers {
		fns = append(fns, f)
	}
	p.mu.Unlock()
	for _, f := range fns {
		f()
	}
}
