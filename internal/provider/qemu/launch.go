package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/vmimage"
)

// VM size defaults and bounds (launch { qemu { memory, cpus } }).
const (
	DefaultMemory = 128 << 20
	MinMemory     = 32 << 20
	MaxMemory     = 64 << 30
	DefaultCPUs   = 1
	MaxCPUs       = 64
	// portTries is how often a launch tries another host port when QEMU
	// could not bind the one it was given (another process took it).
	portTries = 5
	// startTimeout bounds QEMU's start, until -daemonize returns.
	startTimeout = time.Minute
)

// meta is an instance's record, instances/<id>/meta.json. It is written
// before QEMU starts (PID 0) and again with the PID once it runs.
type meta struct {
	ID           string    `json:"id"`
	Fleet        string    `json:"fleet"`
	ImageDigest  string    `json:"image_digest"`
	TemplateHash string    `json:"template_hash"`
	Address      string    `json:"address"`
	StartedAt    time.Time `json:"started_at"`
	PID          int       `json:"pid,omitempty"`
	PIDStart     uint64    `json:"pid_start,omitempty"`
	Accel        string    `json:"accel"`
	Machine      string    `json:"machine"`
	MemoryBytes  int64     `json:"memory_bytes"`
	CPUs         int       `json:"cpus"`
	Disk         bool      `json:"disk"`
}

func zapID(id string) zap.Field { return zap.String("instance_id", id) }

// Launch starts VM req.InstanceID from the stored image req.ImageDigest.
// If the provider already has that instance it returns it: a launch is
// idempotent by id, also across agents sharing the directory. Launch
// returns once QEMU runs; the boot slot it took is held until the guest
// answers on its port (or exits, or BootWait passes).
func (p *Provider) Launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	obs, err := p.launch(ctx, req)
	if err != nil {
		return instance.Observed{}, fmt.Errorf("qemu: launch %s: %w", req.InstanceID, err)
	}
	return obs, nil
}

func (p *Provider) launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	if err := instance.CheckID(req.InstanceID); err != nil {
		return instance.Observed{}, err
	}
	mem, cpus, err := vmSize(req.Launch)
	if err != nil {
		return instance.Observed{}, err
	}
	if len(req.Launch.Command) > 0 {
		return instance.Observed{}, instance.Permanent(errors.New("launch.command is not supported by the qemu provider: a VM runs its image's init, which starts the app; pass args and env instead"))
	}
	img, err := p.image(req.ImageDigest)
	if err != nil {
		return instance.Observed{}, err
	}
	l, err := p.lock(ctx, req.InstanceID)
	if err != nil {
		return instance.Observed{}, err
	}
	defer l.unlock()
	if m, err := p.readMeta(req.InstanceID); err == nil {
		if m.PID != 0 {
			return p.observed(m), nil // launched already
		}
		if obs := p.adoptInterrupted(m); obs.Phase == instance.Running {
			return obs, nil // launched already, interrupted after QEMU started
		}
		// Cut before QEMU started: the launch did not happen; do it.
		p.removeInstance(req.InstanceID)
	} else if !errors.Is(err, os.ErrNotExist) {
		return instance.Observed{}, err
	}
	// A directory without a record is what a launch interrupted before
	// it wrote one leaves behind.
	p.removeUnrecorded(req.InstanceID)
	slot, err := p.acquireSlot(ctx)
	if err != nil {
		return instance.Observed{}, err
	}
	m := meta{ID: req.InstanceID, Fleet: req.Fleet, ImageDigest: req.ImageDigest, TemplateHash: req.TemplateHash,
		StartedAt: time.Now().UTC(), Accel: p.accel, Machine: img.man.Machine, MemoryBytes: mem, CPUs: cpus, Disk: img.man.Disk != ""}
	if err := p.start(ctx, req, img, &m); err != nil {
		slot.release()
		p.removeInstance(req.InstanceID)
		return instance.Observed{}, err
	}
	go p.holdSlot(slot, m)
	p.log.Info("vm launched", zapID(m.ID), zap.String("fleet", m.Fleet), zap.Int("pid", m.PID), zap.String("address", m.Address), zap.String("accel", m.Accel))
	return p.observed(m), nil
}

// vmSize reads the VM's memory and CPUs from the template.
func vmSize(l instance.Launch) (mem int64, cpus int, err error) {
	mem, cpus = DefaultMemory, DefaultCPUs
	if q := l.QEMU; q != nil {
		if q.MemoryBytes != 0 {
			mem = q.MemoryBytes
		}
		if q.CPUs != 0 {
			cpus = q.CPUs
		}
	}
	if mem < MinMemory || mem > MaxMemory {
		return 0, 0, instance.Permanent(fmt.Errorf("memory %d bytes: want %d MiB to %d GiB", mem, MinMemory>>20, MaxMemory>>30))
	}
	if cpus < 1 || cpus > MaxCPUs {
		return 0, 0, instance.Permanent(fmt.Errorf("cpus %d: want 1 to %d", cpus, MaxCPUs))
	}
	return mem, cpus, nil
}

// start makes the instance directory and starts QEMU in it, trying other
// ports when the one given was taken meanwhile.
func (p *Provider) start(ctx context.Context, req instance.LaunchRequest, img imageInfo, m *meta) error {
	dir := p.instanceDir(m.ID)
	if err := os.MkdirAll(filepath.Join(dir, shareDir), 0o750); err != nil {
		return err
	}
	gl, err := json.Marshal(vmimage.GuestLaunch{ID: m.ID, Fleet: m.Fleet, Digest: m.ImageDigest, Args: req.Launch.Args,
		Env: req.Launch.Env, GuestPort: img.man.GuestPort, Share: true})
	if err != nil {
		return err
	}
	if len(gl) > vmimage.MaxLaunch {
		return instance.Permanent(fmt.Errorf("args and env take %d bytes; a VM gets at most %d", len(gl), vmimage.MaxLaunch))
	}
	if err := os.WriteFile(filepath.Join(dir, launchFile), gl, 0o640); err != nil {
		return err
	}
	if m.Disk {
		out, err := exec.CommandContext(ctx, p.img, "create", "-q", "-f", "qcow2", "-F", "raw",
			"-b", filepath.Join(img.dir, img.man.Disk), filepath.Join(dir, overlay)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("qemu-img create overlay: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	var lastErr error
	started := false
	for try := 0; try < portTries; try++ {
		port, err := p.freePort()
		if err != nil {
			return err
		}
		m.Address = net.JoinHostPort(p.bindHost, strconv.Itoa(port))
		m.PID, m.PIDStart = 0, 0
		// The record exists before QEMU does, so a crash from here on
		// leaves an instance List shows and Terminate cleans up.
		if err := writeMeta(dir, *m); err != nil {
			return err
		}
		err = p.runQEMU(ctx, dir, p.qemuArgs(img, *m, port))
		if err == nil {
			started = true
			break
		}
		lastErr = err
		if !strings.Contains(err.Error(), "host forwarding") {
			return err
		}
	}
	if !started {
		return lastErr
	}
	pid, start, err := readPIDFile(dir)
	if err != nil {
		return fmt.Errorf("qemu started but its pid file: %w", err)
	}
	m.PID, m.PIDStart = pid, start
	return writeMeta(dir, *m)
}

// runQEMU starts QEMU with -daemonize: it returns once the VM runs in
// the background, in a session of its own (it outlives the agent), or
// with QEMU's own error when it could not start.
func (p *Provider) runQEMU(ctx context.Context, dir string, args []string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.binary, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "..."
		}
		return fmt.Errorf("%s: %v: %s", filepath.Base(p.binary), err, msg)
	}
	return nil
}

// qemuArgs is QEMU's command line for one VM. Paths are absolute (QEMU
// changes to / when it daemonizes) but for the QMP socket's, which is
// relative to the instance directory, QEMU's working directory while it
// starts, to stay within the 107 bytes a socket path may have.
func (p *Provider) qemuArgs(img imageInfo, m meta, port int) []string {
	dir := p.instanceDir(m.ID)
	esc := func(s string) string { return strings.ReplaceAll(s, ",", ",,") }
	dev := func(kind string) string {
		if m.Machine == vmimage.MachinePC {
			return kind + "-pci"
		}
		return kind + "-device"
	}
	accel := "tcg"
	if m.Accel == AccelKVM {
		accel = "kvm"
	}
	cmdline := img.man.Cmdline
	if m.Accel == AccelTCG && p.tscKHz > 0 {
		cmdline += " tsc_early_khz=" + strconv.Itoa(p.tscKHz)
	}
	fwd := fmt.Sprintf("user,id=net0,hostfwd=tcp:%s:%d-:%d", p.bindHost, port, img.man.GuestPort)
	if !p.outbound {
		fwd += ",restrict=on"
	}
	nic := dev("virtio-net") + ",netdev=net0"
	if m.Machine == vmimage.MachinePC {
		nic += ",romfile="
	}
	args := []string{
		"-name", m.ID,
		"-nodefaults", "-no-user-config", "-display", "none", "-daemonize", "-pidfile", filepath.Join(dir, pidFile),
		"-machine", m.Machine, "-accel", accel,
		"-m", strconv.FormatInt(m.MemoryBytes>>20, 10), "-smp", strconv.Itoa(m.CPUs),
		"-kernel", filepath.Join(img.dir, img.man.Kernel), "-initrd", filepath.Join(img.dir, img.man.Initrd),
		"-append", cmdline, "-no-reboot",
		"-chardev", "file,id=serial,append=on,path=" + esc(p.LogPath(m.ID)), "-serial", "chardev:serial",
		"-qmp", "unix:" + qmpSocket + ",server=on,wait=off",
		"-netdev", fwd, "-device", nic,
		"-fw_cfg", "name=" + vmimage.FwCfgLaunch + ",file=" + esc(filepath.Join(dir, launchFile)),
		"-fsdev", "local,id=share,security_model=mapped-xattr,path=" + esc(filepath.Join(dir, shareDir)), "-device", dev("virtio-9p") + ",fsdev=share,mount_tag=" + vmimage.ShareTag,
	}
	if m.Accel == AccelKVM {
		args = append(args, "-cpu", "host")
	}
	if m.Disk {
		args = append(args, "-drive", "file="+esc(filepath.Join(dir, overlay))+",if=none,id=root,format=qcow2,discard=ignore",
			"-device", dev("virtio-blk")+",drive=root")
	}
	return args
}

// freePort picks a port on the bind host that the kernel reports free and
// that this provider did not give out in the last minute.
func (p *Provider) freePort() (int, error) {
	for i := 0; i < 20; i++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(p.bindHost, "0"))
		if err != nil {
			return 0, fmt.Errorf("find a free port on %s: %w", p.bindHost, err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		p.mu.Lock()
		now := time.Now()
		for q, at := range p.recent {
			if now.Sub(at) > time.Minute {
				delete(p.recent, q)
			}
		}
		_, taken := p.recent[port]
		if !taken {
			p.recent[port] = now
		}
		p.mu.Unlock()
		if !taken {
			return port, nil
		}
	}
	return 0, errors.New("no free port found")
}

// holdSlot keeps a boot slot until the guest answers on its port, QEMU
// exits, or BootWait passes.
func (p *Provider) holdSlot(slot *bootSlot, m meta) {
	defer slot.release()
	deadline := time.Now().Add(p.bootWait)
	for time.Now().Before(deadline) {
		if !processAlive(m.PID, m.PIDStart) || guestAnswers(m.Address) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.log.Warn("vm did not answer on its port within the boot wait; its boot slot is free again", zapID(m.ID), zap.Duration("boot_wait", p.bootWait))
}

// guestAnswers says whether the guest sends anything back to a request on
// its forwarded port. QEMU accepts the connection itself, before the
// guest listens, so an accepted connection proves nothing.
func guestAnswers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return false
	}
	var b [1]byte
	n, _ := c.Read(b[:])
	return n > 0
}

func writeMeta(dir string, m meta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+metaFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, metaFile))
}

func (p *Provider) readMeta(id string) (meta, error) {
	var m meta
	b, err := os.ReadFile(filepath.Join(p.instanceDir(id), metaFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("metadata of %s: %w", id, err)
	}
	if m.ID != id {
		return m, fmt.Errorf("metadata of %s names instance %q", id, m.ID)
	}
	return m, nil
}

func (p *Provider) observed(m meta) instance.Observed {
	ref := ""
	if m.PID > 0 {
		// Short enough for the status's REF column: the pid to kill -9,
		// and the accelerator.
		ref = fmt.Sprintf("%d %s", m.PID, m.Accel)
	}
	return instance.Observed{ID: m.ID, Fleet: m.Fleet, ImageDigest: m.ImageDigest, TemplateHash: m.TemplateHash,
		Phase: instance.Running, Address: m.Address, StartedAt: m.StartedAt, ProviderRef: ref, Location: p.instanceDir(m.ID)}
}
