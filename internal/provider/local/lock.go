package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// errLockBusy is returned by tryLockInstance when someone else holds the lock.
var errLockBusy = errors.New("instance lock is busy")

// Polling bounds of lockInstance: flock(2) cannot be interrupted by a
// context, so a waiter retries LOCK_NB with a growing pause.
const (
	lockPollMin = time.Millisecond
	lockPollMax = 20 * time.Millisecond
)

// instanceLock is held by every operation on one instance id (Launch,
// Terminate, the reaper's read-modify-write of the metadata, List's
// recovery path, port takeover, log rotation), by any provider over the
// directory: several agents of a cluster may share it, and leadership
// moves, so the agent that launched an instance is not always the one
// that terminates it.
//
// It is two locks: an in-process mutex, so goroutines of one provider
// queue without polling, then flock(2) on locks/<id>.lock, which other
// processes honour.
type instanceLock struct {
	p       *Provider
	id      string
	f       *os.File
	release func() // of the in-process mutex
}

func (p *Provider) lockPath(id string) string { return filepath.Join(p.locksDir, id+".lock") }

// lockInstance takes the lock of instance id, waiting until ctx ends.
func (p *Provider) lockInstance(ctx context.Context, id string) (*instanceLock, error) {
	return p.acquire(ctx, id, true)
}

// tryLockInstance takes the lock of instance id if it is free now, or
// returns errLockBusy.
func (p *Provider) tryLockInstance(id string) (*instanceLock, error) {
	return p.acquire(context.Background(), id, false)
}

func (p *Provider) acquire(ctx context.Context, id string, wait bool) (*instanceLock, error) {
	release, err := p.locks.lock(ctx, id, wait)
	if err != nil {
		return nil, err
	}
	f, err := flockPath(ctx, p.lockPath(id), wait)
	if err != nil {
		release()
		return nil, err
	}
	return &instanceLock{p: p, id: id, f: f, release: release}, nil
}

// unlock releases the lock. When the instance has no metadata (it was
// terminated, a launch failed, or it never existed) the lock file is
// removed first, still under the lock, so locks/ does not fill up with
// the names of instances long gone. That removal is the last thing the
// holder does: whoever locks a new file at the path afterwards finds
// the instance gone, and whoever waited on the removed file notices
// (see flockPath) and locks the new one.
func (l *instanceLock) unlock() {
	if _, err := os.Lstat(l.p.metaPath(l.id)); errors.Is(err, fs.ErrNotExist) {
		_ = os.Remove(l.p.lockPath(l.id))
	}
	// Unlock explicitly rather than by closing: a child forked meanwhile
	// shares the open file description until it execs.
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	_ = l.f.Close()
	l.release()
}

// flockPath opens (creating it if needed) and exclusively flocks the
// file at path. Without wait it fails with errLockBusy if the file is
// locked; with wait it polls until the lock is free or ctx ends.
//
// The holder may remove the file before releasing it (see unlock). A
// waiter then gets the lock of a file that is no longer at the path, so
// after locking it compares its descriptor with the path and starts
// over when they differ.
func flockPath(ctx context.Context, path string, wait bool) (*os.File, error) {
	pause := lockPollMin
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open lock: %w", err)
		}
		for {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				break
			}
			if !wait {
				f.Close()
				return nil, errLockBusy
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, ctx.Err()
			case <-time.After(pause):
			}
			pause = min(2*pause, lockPollMax)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		same, err := isAtPath(f, path)
		if err != nil {
			f.Close()
			return nil, err
		}
		if same {
			return f, nil
		}
		f.Close() // a removed file: its lock protects nothing
	}
}

// isAtPath reports whether f is the file at path now.
func isAtPath(f *os.File, path string) (bool, error) {
	held, err := f.Stat()
	if err != nil {
		return false, err
	}
	now, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(held, now), nil
}

// keyedLocks is a set of mutexes by key whose lock honours a context.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	ch   chan struct{}
	refs int
}

// lock locks key and returns the unlock function. Without wait it fails
// with errLockBusy instead of waiting.
func (k *keyedLocks) lock(ctx context.Context, key string, wait bool) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	unlock := func() { <-l.ch; release() }
	select {
	case l.ch <- struct{}{}:
		return unlock, nil
	default:
	}
	if !wait {
		release()
		return nil, errLockBusy
	}
	select {
	case l.ch <- struct{}{}:
		return unlock, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
