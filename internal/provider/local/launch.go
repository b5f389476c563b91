package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/hostdir"
)

// basePATH is the PATH an instance gets unless its launch env sets one.
const basePATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Environment variables the provider sets for every instance; they win
// over the fleet's launch env.
const (
	EnvInstanceID  = instance.EnvInstanceID
	EnvFleet       = instance.EnvFleet
	EnvImageDigest = instance.EnvImageDigest
	EnvPort        = instance.EnvPort
)

func zapID(id string) zap.Field  { return zap.String("instance_id", id) }
func zapPID(pid int) zap.Field   { return zap.Int("pid", pid) }
func zapErr(err error) zap.Field { return zap.Error(err) }

// Launch starts the instance req.InstanceID from the stored image
// req.ImageDigest. If the provider already has that instance (running or
// not), Launch returns it as it is and starts nothing.
//
// The instance root is a fresh copy of the image, checked against the
// digest. The process runs in its own session with the root as working
// directory, stdin from /dev/null and stdout and stderr appended to the
// instance log (LogPath), a file it writes directly, so it never depends
// on the agent staying up. Its environment is PATH, HOME (the root),
// TMPDIR (a directory outside the root), the fleet's launch env, and
// IMMUTD_INSTANCE_ID, IMMUTD_FLEET, IMMUTD_IMAGE_DIGEST and PORT (a TCP
// port free on the bind host and reserved in ports/, so that no other
// instance of the directory gets it while this one exists).
//
// The command is the image's entrypoint, or req.Launch.Command when set,
// followed by req.Launch.Args. A command with a slash that is not
// absolute is relative to the instance root; a bare name is taken from
// the instance root if it is a file there, else looked up in PATH.
func (p *Provider) Launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	obs, err := p.launch(ctx, req)
	if err != nil {
		return instance.Observed{}, fmt.Errorf("local: launch %s: %w", req.InstanceID, err)
	}
	return obs, nil
}

func (p *Provider) launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	id := req.InstanceID
	if err := req.Check(); err != nil {
		return instance.Observed{}, err
	}
	if _, err := parseDigest(req.ImageDigest); err != nil {
		return instance.Observed{}, instance.Permanent(err)
	}
	lock, err := p.lockInstance(ctx, id)
	if err != nil {
		return instance.Observed{}, err
	}
	defer lock.unlock()

	// Idempotence: an id with metadata is an existing instance.
	m, err := p.readMeta(id)
	switch {
	case err == nil:
		p.recoverPID(m)
		return p.observe(m)
	case !errors.Is(err, fs.ErrNotExist):
		p.log.Warn("unreadable instance metadata", zapID(id), zapErr(err))
		return p.unreadableObserved(id, err), nil
	}
	if err := ctx.Err(); err != nil {
		return instance.Observed{}, err
	}
	rec, err := p.record(ctx, req.ImageDigest)
	if err != nil {
		return instance.Observed{}, err
	}
	port, err := p.reservePort(id)
	if err != nil {
		return instance.Observed{}, fmt.Errorf("reserve port: %w", err)
	}
	// Whatever this launch leaves behind when it fails (the reservation
	// included) is removed, under the lock.
	started := false
	defer func() {
		if !started {
			if err := p.removeInstanceFiles(id, port); err != nil {
				p.log.Warn("remove files of failed launch failed", zapID(id), zapErr(err))
			}
		}
	}()
	root, tmp, logPath := p.instanceRoot(id), p.instanceTmp(id), p.LogPath(id)
	// Without metadata these are leftovers of an interrupted launch, not
	// an instance: start from scratch.
	for _, d := range []string{root, tmp} {
		if err := hostdir.RemoveTree(d); err != nil {
			return instance.Observed{}, fmt.Errorf("remove leftover %s: %w", d, err)
		}
	}
	m = &meta{
		ID:           id,
		Fleet:        req.Fleet,
		ImageDigest:  req.ImageDigest,
		TemplateHash: req.TemplateHash,
		Port:         port,
		Address:      net.JoinHostPort(p.bindHost, strconv.Itoa(port)),
		CreatedAt:    p.now().UTC(),
	}
	// Metadata first: whatever a crash leaves behind from here on is
	// found by List and cleaned up by Terminate.
	if err := p.writeMeta(m); err != nil {
		return instance.Observed{}, fmt.Errorf("write metadata: %w", err)
	}

	entries, err := copyTree(ctx, p.imageDir(req.ImageDigest), root, walkOptions{})
	if err != nil {
		return instance.Observed{}, fmt.Errorf("copy image: %w", err)
	}
	if got := treeDigest(entries); got != req.ImageDigest {
		return instance.Observed{}, fmt.Errorf("stored image %s is corrupted (the copy has digest %s); import the bundle again", req.ImageDigest, got)
	}
	argv := append([]string(nil), rec.Manifest.Entrypoint...)
	if len(req.Launch.Command) > 0 {
		argv = append([]string(nil), req.Launch.Command...)
	}
	argv = append(argv, req.Launch.Args...)
	if argv[0] == "" {
		return instance.Observed{}, errors.New("empty command")
	}
	env := buildEnv(req, root, tmp, port)
	exe, err := resolveCommand(root, argv[0], envValue(env, "PATH"))
	if err != nil {
		return instance.Observed{}, err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return instance.Observed{}, err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return instance.Observed{}, fmt.Errorf("open log: %w", err)
	}
	cmd, err := startRetrying(ctx, func() *exec.Cmd {
		return &exec.Cmd{
			Path: exe,
			// argv[0] is the absolute path, so `ps` shows which instance
			// a process belongs to.
			Args:        append([]string{exe}, argv[1:]...),
			Dir:         root,
			Env:         env,
			Stdout:      logf,
			Stderr:      logf,
			SysProcAttr: &syscall.SysProcAttr{Setsid: true},
		}
	})
	logf.Close()
	if err != nil {
		return instance.Observed{}, fmt.Errorf("start %s: %w", argv[0], err)
	}
	pid := cmd.Process.Pid
	// Not reaped before reapChild below, so /proc still has it.
	st, err := readProcStat(p.procRoot, pid)
	if err == nil {
		m.PID, m.StartTicks = pid, st.StartTicks
		m.StartedAt = p.now().UTC()
		m.Command, m.Executable = argv, exe
		err = p.writeMeta(m)
	}
	if err != nil {
		// A process we cannot record must not keep running untracked.
		_ = unix.Kill(-pid, unix.SIGKILL)
		_ = cmd.Wait()
		return instance.Observed{}, fmt.Errorf("record process %d: %w", pid, err)
	}
	started = true
	c := &child{pid: pid, done: make(chan struct{})}
	p.mu.Lock()
	p.children[id] = c
	p.mu.Unlock()
	p.reapChild(id, cmd, c, st.StartTicks)

	p.log.Info("instance launched", zapID(id), zap.String("fleet", req.Fleet),
		zap.String("image", req.ImageDigest), zapPID(pid), zap.String("address", m.Address))
	return p.observe(m)
}

// startRetrying starts the command newCmd makes, again while exec fails
// with ETXTBSY ("text file busy"). A launch copies the image's
// executable; if another launch forks in the meantime, the child holds
// the copy's write descriptor until it execs, and executing the copy
// fails. The window is short, so a few retries over about 300ms cover it.
func startRetrying(ctx context.Context, newCmd func() *exec.Cmd) (*exec.Cmd, error) {
	wait := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		cmd := newCmd()
		err := cmd.Start()
		if err == nil || !errors.Is(err, syscall.ETXTBSY) || attempt == 6 {
			return cmd, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return cmd, err
		}
		wait *= 2
	}
}

// exited is told by the reaper (reaper.go) that the child c of instance
// id has been reaped, for reason ("exit status 1", "signal: killed"). It
// wakes whoever waits for the child (waitGone) and records the exit in a
// goroutine of its own, which lives only as long as that takes: the
// instance lock may be busy, and the reaper must not wait for it.
func (p *Provider) exited(id string, c *child, ticks uint64, reason string) {
	close(c.done)
	p.mu.Lock()
	if p.children[id] == c {
		delete(p.children, id)
	}
	p.mu.Unlock()
	go p.recordExit(id, c, ticks, reason)
}

// recordExit records how a process this provider started ended.
//
// Another agent may have terminated the instance meanwhile and removed
// its files. So the exit is recorded only under the instance lock and
// only into metadata that still exists and still names this process:
// the reaper updates a record, it never recreates one.
func (p *Provider) recordExit(id string, c *child, ticks uint64, reason string) {
	if h := reapHook.Load(); h != nil {
		(*h)(id)
	}
	// Watch hears of the exit once it is recorded (or recording failed),
	// after the lock is released.
	notify := true
	defer func() {
		if notify {
			p.notifyWatchers()
		}
	}()
	lock, err := p.lockInstance(context.Background(), id)
	if err != nil {
		p.log.Warn("record exit failed", zapID(id), zapErr(err))
		return
	}
	defer lock.unlock()
	m, err := p.readMeta(id)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && (m.PID != c.pid || m.StartTicks != ticks)) {
		// Terminated and removed (maybe by another agent), or another
		// instance by now: there is nothing to record.
		p.log.Debug("exit not recorded, instance removed", zapID(id), zapPID(c.pid))
		notify = false
		return
	}
	if err != nil {
		p.log.Warn("record exit failed", zapID(id), zapErr(err))
		return
	}
	m.ExitReason = reason
	m.ExitedAt = p.now().UTC()
	if err := p.writeMeta(m); err != nil {
		p.log.Warn("record exit failed", zapID(id), zapErr(err))
	}
	p.log.Info("instance exited", zapID(id), zap.String("fleet", m.Fleet), zapPID(c.pid), zap.String("reason", reason))
}

// buildEnv returns the instance's environment, sorted.
func buildEnv(req instance.LaunchRequest, root, tmp string, port int) []string {
	return req.Env(map[string]string{"PATH": basePATH, "HOME": root, "TMPDIR": tmp}, port)
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// resolveCommand finds the executable for argv[0] (see Launch).
func resolveCommand(root, name, pathList string) (string, error) {
	switch {
	case filepath.IsAbs(name):
		return name, nil
	case strings.Contains(name, "/"):
		clean := filepath.Clean(name)
		if clean == ".." || strings.HasPrefix(clean, "../") {
			return "", fmt.Errorf("command %q leaves the instance root; use an absolute path", name)
		}
		return filepath.Join(root, clean), nil
	}
	if isExecutable(filepath.Join(root, name)) {
		return filepath.Join(root, name), nil
	}
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		if c := filepath.Join(dir, name); isExecutable(c) {
			return c, nil
		}
	}
	return "", fmt.Errorf("command %q is neither in the instance root nor in PATH", name)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// removeInstanceFiles deletes everything the provider keeps for an
// instance: root, tmp, both logs, the reservation of port (0: unknown,
// the reservation turns stale and is taken over later), metadata last so
// an interrupted removal is retried. The caller holds the instance lock,
// whose file unlock then removes.
func (p *Provider) removeInstanceFiles(id string, port int) error {
	p.drift.drop(id)
	var errs []error
	for _, d := range []string{p.instanceRoot(id), p.instanceTmp(id)} {
		if err := hostdir.RemoveTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	// The last part of its output outlives the instance.
	if err := p.keepOutput(id); err != nil {
		p.log.Warn("could not keep the instance's last output", zapID(id), zapErr(err))
	}
	for _, f := range []string{p.LogPath(id), p.LogPath(id) + rotatedSuffix} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := p.releasePort(id, port); err != nil {
		errs = append(errs, fmt.Errorf("release port %d: %w", port, err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.Remove(p.metaPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(p.metaDir)
}
