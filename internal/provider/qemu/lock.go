package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// lockPoll is how often a wait for a held lock or a boot slot tries again.
const lockPoll = 20 * time.Millisecond

// idLock is the held flock(2) of one instance id (locks/<id>.lock). Every
// operation on an instance holds it, in this process and across agents
// sharing the directory.
type idLock struct {
	p    *Provider
	id   string
	f    *os.File
	path string
}

var errLocked = errors.New("locked")

// tryLock takes the lock of id without waiting, or fails with errLocked.
func (p *Provider) tryLock(id string) (*idLock, error) {
	path := filepath.Join(p.locksDir, id+".lock")
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, errLocked
			}
			return nil, err
		}
		// The file may have been removed (by an unlock that found the
		// instance gone) between our open and flock: then we hold a lock
		// nobody else can see. Try again on the file at the path.
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil && held.Ino == now.Ino && held.Dev == now.Dev {
			return &idLock{p: p, id: id, f: f, path: path}, nil
		}
		f.Close()
	}
}

// lock waits for the lock of id until ctx ends.
func (p *Provider) lock(ctx context.Context, id string) (*idLock, error) {
	for {
		l, err := p.tryLock(id)
		if !errors.Is(err, errLocked) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the lock of %s: %w", id, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// unlock releases the lock; when the instance is gone it removes the lock
// file first, so that locks of terminated instances do not pile up.
func (l *idLock) unlock() {
	if _, err := os.Lstat(l.p.instanceDir(l.id)); errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(l.path)
	}
	l.f.Close()
}

// bootSlot is a held boot slot: a flock of one of SlotDir's slot files.
type bootSlot struct{ f *os.File }

// acquireSlot waits for a free boot slot until ctx ends.
func (p *Provider) acquireSlot(ctx context.Context) (*bootSlot, error) {
	for {
		for i := 0; i < p.bootSlots; i++ {
			f, err := os.OpenFile(filepath.Join(p.slotDir, fmt.Sprintf("boot-%d.lock", i)), os.O_RDWR|os.O_CREATE, 0o640)
			if err != nil {
				return nil, err
			}
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
				return &bootSlot{f: f}, nil
			} else if !errors.Is(err, syscall.EWOULDBLOCK) {
				f.Close()
				return nil, err
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for one of %d boot slots: %w", p.bootSlots, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

func (s *bootSlot) release() { s.f.Close() }
