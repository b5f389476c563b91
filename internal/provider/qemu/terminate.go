package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/hostdir"
)

// quitWait is how long Terminate waits after QMP quit before SIGKILL.
const quitWait = 5 * time.Second

// Terminate stops VM id and removes its directory (the overlay, the
// share, the sockets); its console log is kept. It presses the ACPI power
// button (QMP system_powerdown), so the guest's init stops the app with
// SIGTERM and powers off; once grace has passed it quits QEMU (QMP quit),
// and kills it (SIGKILL) if that does not end it. A missing instance is
// success. When ctx ends first it returns ctx's error and leaves the
// instance as it is, for a retry.
func (p *Provider) Terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := p.terminate(ctx, id, grace); err != nil {
		return fmt.Errorf("qemu: terminate %s: %w", id, err)
	}
	return nil
}

func (p *Provider) terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := instance.CheckID(id); err != nil {
		return err
	}
	l, err := p.lock(ctx, id)
	if err != nil {
		return err
	}
	defer l.unlock()
	dir := p.instanceDir(id)
	m, err := p.readMeta(id)
	if errors.Is(err, os.ErrNotExist) {
		p.removeUnrecorded(id)
		return nil
	}
	pid, start := m.PID, m.PIDStart
	if err != nil || pid == 0 {
		// No usable record, or QEMU started after the record was
		// written without its pid: the pid file says which QEMU it is.
		pid, start, _ = readPIDFile(dir)
	}
	if processAlive(pid, start) {
		if err := p.stop(ctx, id, dir, pid, start, grace); err != nil {
			return err
		}
	} else if err := killUnrecorded(dir); err != nil {
		return err
	}
	p.removeInstance(id)
	p.log.Info("vm terminated", zapID(id))
	return nil
}

// killUnrecorded kills the QEMU processes of dir that no pid names (a
// launch interrupted while QEMU daemonized), so that none outlives the
// directory it is removed with.
func killUnrecorded(dir string) error {
	for _, pid := range instanceQEMUs(dir) {
		_, start, err := procStat(pid)
		if err != nil {
			continue
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill qemu %d: %w", pid, err)
		}
		if !waitExit(pid, start, time.Now().Add(quitWait), nil) {
			return fmt.Errorf("qemu %d still runs %s after SIGKILL", pid, quitWait)
		}
	}
	return nil
}

// stop ends the QEMU process pid of instance id: power button, grace,
// QMP quit, SIGKILL.
func (p *Provider) stop(ctx context.Context, id, dir string, pid int, start uint64, grace time.Duration) error {
	if _, err := qmpCommand(ctx, dir, "system_powerdown", nil); err != nil {
		p.log.Warn("qmp system_powerdown failed; quitting qemu after the grace", zapID(id), zap.Error(err))
	}
	if waitExit(pid, start, time.Now().Add(grace), ctx.Done()) {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := qmpCommand(ctx, dir, "quit", nil); err != nil {
		p.log.Warn("qmp quit failed; killing qemu", zapID(id), zap.Error(err))
	}
	if waitExit(pid, start, time.Now().Add(quitWait), ctx.Done()) {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if processAlive(pid, start) {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill qemu %d: %w", pid, err)
		}
	}
	if !waitExit(pid, start, time.Now().Add(quitWait), ctx.Done()) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("qemu %d still runs %s after SIGKILL", pid, quitWait)
	}
	return nil
}

// removeInstance deletes the instance directory: the record first, so
// that a crash half way leaves a directory without one, which the next
// launch of the id or the next start cleans up.
func (p *Provider) removeInstance(id string) {
	dir := p.instanceDir(id)
	if err := os.Remove(filepath.Join(dir, metaFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.log.Warn("remove vm record failed", zapID(id), zap.Error(err))
	}
	if err := hostdir.RemoveTree(dir); err != nil {
		p.log.Warn("remove vm directory failed", zapID(id), zap.Error(err))
	}
}

// removeUnrecorded cleans up the directory of an instance without a
// record (an interrupted launch or removal), killing a QEMU it may have
// started. The caller holds the instance's lock.
func (p *Provider) removeUnrecorded(id string) {
	dir := p.instanceDir(id)
	if _, err := os.Lstat(dir); err != nil {
		return
	}
	if pid, start, err := readPIDFile(dir); err == nil && processAlive(pid, start) {
		_ = unix.Kill(pid, unix.SIGKILL)
		waitExit(pid, start, time.Now().Add(quitWait), nil)
	}
	if err := killUnrecorded(dir); err != nil {
		p.log.Warn("kill the qemu of an unrecorded vm failed", zapID(id), zap.Error(err))
	}
	p.removeInstance(id)
}
