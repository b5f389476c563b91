package qemu

import (
	"context"
	"errors"
	"os"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// watchRescan is how often Watch looks for VMs it does not watch yet.
const watchRescan = time.Second

// Watch calls notify as soon as the QEMU process of a VM exits, until ctx
// ends, so the leader's next pass sees it exited at once rather than at
// its next periodic pass. It watches every VM's process through a pidfd
// (pidfd_open(2), readable when the process exits; it works for processes
// that are not the agent's children) in one epoll set, and looks for new
// VMs every second. The periodic pass stays the source of truth.
func (p *Provider) Watch(ctx context.Context, notify func()) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		p.log.Warn("cannot watch vm processes; exits are seen at the next pass", zap.Error(err))
		return
	}
	defer unix.Close(ep)
	watched := map[int32]string{} // pidfd -> instance id
	byID := map[string]int32{}
	defer func() {
		for fd := range watched {
			unix.Close(int(fd))
		}
	}()
	events := make([]unix.EpollEvent, 16)
	next := time.Now()
	for ctx.Err() == nil {
		if !time.Now().Before(next) {
			p.watchNew(ep, watched, byID)
			p.watching.Store(int64(len(watched)))
			next = time.Now().Add(watchRescan)
		}
		n, err := unix.EpollWait(ep, events, int(watchRescan/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			p.log.Warn("watching vm processes failed; exits are seen at the next pass", zap.Error(err))
			return
		}
		for _, ev := range events[:max(n, 0)] {
			id := watched[ev.Fd]
			_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, int(ev.Fd), nil)
			unix.Close(int(ev.Fd))
			delete(watched, ev.Fd)
			delete(byID, id)
			p.log.Debug("vm process exited", zapID(id))
		}
		if n > 0 {
			notify()
		}
	}
}

// watchNew adds the processes of VMs not watched yet to the epoll set.
func (p *Provider) watchNew(ep int, watched map[int32]string, byID map[string]int32) {
	des, err := os.ReadDir(p.instancesDir)
	if err != nil {
		return
	}
	for _, de := range des {
		id := de.Name()
		if _, ok := byID[id]; ok {
			continue
		}
		m, err := p.readMeta(id)
		if err != nil || m.PID == 0 {
			continue
		}
		fd, err := unix.PidfdOpen(m.PID, 0)
		if err != nil {
			continue // gone already: the pass sees it
		}
		// The pid may have been reused before we opened it.
		if !processAlive(m.PID, m.PIDStart) {
			unix.Close(fd)
			continue
		}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			unix.Close(fd)
			continue
		}
		watched[int32(fd)] = id
		byID[id] = int32(fd)
	}
	// Forget VMs that were removed while their process lives on (a
	// terminate in progress keeps watching until it ends).
	for id, fd := range byID {
		if _, err := os.Lstat(p.instanceDir(id)); errors.Is(err, os.ErrNotExist) {
			_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, int(fd), nil)
			unix.Close(int(fd))
			delete(watched, fd)
			delete(byID, id)
		}
	}
}
