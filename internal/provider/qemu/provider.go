package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
)

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Defaults and bounds of Options.
const (
	DefaultBinary     = "qemu-system-x86_64"
	DefaultBindHost   = "127.0.0.1"
	DefaultLogMaxSize = 4 << 20
	MinLogMaxSize     = 64 << 10
	DefaultLogKeep    = 500
	DefaultLogMaxAge  = 7 * 24 * time.Hour
	DefaultBootWait   = 2 * time.Minute
	MaxBootSlots      = 64
	// minQEMUMajor is the oldest QEMU the provider runs: microvm with
	// ACPI power-down and -fw_cfg files are there from 6.
	minQEMUMajor = 6
)

// Files in an instance directory.
const (
	metaFile   = "meta.json"
	launchFile = "launch.json"
	pidFile    = "qemu.pid"
	qmpSocket  = "qmp.sock"
	overlay    = "overlay.qcow2"
	shareDir   = "share"
)

// Options configures a Provider.
type Options struct {
	// Dir holds the image store, the instance directories, locks and (by
	// default) the console logs. Required.
	Dir string
	// Binary is the QEMU system emulator. Default qemu-system-x86_64 from PATH.
	Binary string
	// Img is qemu-img, needed for images with a disk. Default from PATH.
	Img string
	// Accel is auto (KVM when the host really offers it, else TCG), kvm
	// or tcg.
	Accel string
	// BindHost is the host address the VMs' forwarded ports listen on,
	// and probes dial. Default 127.0.0.1.
	BindHost string
	// BootSlots bounds the VMs booting at once (a boot under TCG is
	// CPU-bound): a launch waits for a slot, and holds it until the guest
	// answers on its port, exits, or BootWait passes. Default: the
	// number of CPUs.
	BootSlots int
	// SlotDir holds the boot slots' lock files; providers (agents) that
	// share it share the bound, so set it to one directory per host.
	// Default <Dir>/slots.
	SlotDir string
	// BootWait bounds how long a boot holds its slot. Default 2m.
	BootWait time.Duration
	// Outbound lets guests open connections to the host and beyond
	// through QEMU's user-mode network; by default they cannot (restrict=on),
	// and only the forwarded port reaches them.
	Outbound bool
	// LogDir receives each VM's serial console as <id>.log. Default <Dir>/logs.
	LogDir string
	// LogMaxSize is the size above which Run rotates a console log to
	// <id>.log.1. Default 4 MiB, at least 64 KiB.
	LogMaxSize int64
	// LogKeep and LogMaxAge bound the logs kept of VMs that are gone:
	// at most LogKeep of them (default 500), none older than LogMaxAge
	// (default 7 days).
	LogKeep   int
	LogMaxAge time.Duration
	// Logger receives the provider's logs. Default: no logging.
	Logger *zap.Logger
}

// Provider runs instances as QEMU virtual machines. Its methods are safe
// for concurrent use; operations on one instance id are serialized, also
// across providers (agents) sharing Dir.
type Provider struct {
	dir, imagesDir, instancesDir, locksDir, logDir, slotDir string
	binary, img                                             string
	accel, version                                          string
	bindHost                                                string
	tscKHz                                                  int
	outbound                                                bool
	bootSlots                                               int
	bootWait                                                time.Duration
	logMaxSize                                              int64
	logKeep                                                 int
	logMaxAge                                               time.Duration
	log                                                     *zap.Logger
	importSem                                               chan struct{}
	// watching is how many VM processes Watch has in its set (for tests).
	watching atomic.Int64

	mu       sync.Mutex
	recent   map[int]time.Time // ports given out lately, not yet bound by QEMU
	imageMan map[string]imageInfo
}

// New checks that this host can run QEMU (the binary, its version, the
// accelerator) and opens the provider directory. A host that cannot run
// VMs fails here, at the agent's start, not at the first launch.
func New(opts Options) (*Provider, error) {
	if opts.Dir == "" {
		return nil, errors.New("qemu: dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: dir: %w", err)
	}
	p := &Provider{dir: dir, imagesDir: filepath.Join(dir, "images"), instancesDir: filepath.Join(dir, "instances"),
		locksDir: filepath.Join(dir, "locks"), logDir: filepath.Join(dir, "logs"), slotDir: filepath.Join(dir, "slots"),
		bindHost: DefaultBindHost, outbound: opts.Outbound, bootSlots: opts.BootSlots, bootWait: opts.BootWait,
		logMaxSize: opts.LogMaxSize, logKeep: opts.LogKeep, logMaxAge: opts.LogMaxAge, log: opts.Logger,
		importSem: make(chan struct{}, 1), recent: map[int]time.Time{}, imageMan: map[string]imageInfo{}}
	if err := p.setOptions(opts); err != nil {
		return nil, err
	}
	if err := p.checkHost(opts); err != nil {
		return nil, err
	}
	for _, d := range []string{p.imagesDir, p.instancesDir, p.locksDir, p.logDir, p.slotDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("qemu: %w", err)
		}
	}
	p.removeLeftovers()
	return p, nil
}

func (p *Provider) setOptions(opts Options) error {
	if opts.BindHost != "" {
		if net.ParseIP(opts.BindHost) == nil {
			return fmt.Errorf("qemu: bind host %q is not an IP address", opts.BindHost)
		}
		p.bindHost = opts.BindHost
	}
	if opts.LogDir != "" {
		d, err := filepath.Abs(opts.LogDir)
		if err != nil {
			return fmt.Errorf("qemu: log dir: %w", err)
		}
		p.logDir = d
	}
	if opts.SlotDir != "" {
		d, err := filepath.Abs(opts.SlotDir)
		if err != nil {
			return fmt.Errorf("qemu: slot dir: %w", err)
		}
		p.slotDir = d
	}
	if p.bootSlots == 0 {
		p.bootSlots = runtime.NumCPU()
	}
	if p.bootSlots < 1 || p.bootSlots > MaxBootSlots {
		return fmt.Errorf("qemu: boot slots %d: want 1 to %d", p.bootSlots, MaxBootSlots)
	}
	if p.bootWait == 0 {
		p.bootWait = DefaultBootWait
	}
	if p.logMaxSize == 0 {
		p.logMaxSize = DefaultLogMaxSize
	}
	if p.logMaxSize < MinLogMaxSize {
		return fmt.Errorf("qemu: log max size %d is below the minimum of %d bytes (64 KiB)", p.logMaxSize, MinLogMaxSize)
	}
	if p.logKeep == 0 {
		p.logKeep = DefaultLogKeep
	}
	if p.logMaxAge == 0 {
		p.logMaxAge = DefaultLogMaxAge
	}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	p.log = p.log.Named("qemu")
	return nil
}

var versionRE = regexp.MustCompile(`QEMU emulator version ([0-9]+)\.([0-9]+)(\.[0-9]+)?`)

// checkHost finds QEMU and qemu-img, checks QEMU's version and that it
// has microvm, and picks the accelerator.
func (p *Provider) checkHost(opts Options) error {
	bin := opts.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return fmt.Errorf("qemu: this host cannot run VMs: %s not found (Debian package qemu-system-x86): %w", bin, err)
	}
	p.binary = path
	img := opts.Img
	if img == "" {
		img = "qemu-img"
	}
	if p.img, err = exec.LookPath(img); err != nil {
		return fmt.Errorf("qemu: this host cannot run VMs with disks: %s not found (Debian package qemu-utils): %w", img, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p.binary, "-version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu: %s -version: %v: %s", p.binary, err, bytes.TrimSpace(out))
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return fmt.Errorf("qemu: %s -version printed no QEMU version: %q", p.binary, firstLine(out))
	}
	if major, _ := strconv.Atoi(string(m[1])); major < minQEMUMajor {
		return fmt.Errorf("qemu: %s is QEMU %s.%s; need %d.0 or later", p.binary, m[1], m[2], minQEMUMajor)
	}
	p.version = strings.TrimPrefix(string(m[0]), "QEMU emulator version ")
	machines, err := exec.CommandContext(ctx, p.binary, "-machine", "help").CombinedOutput()
	if err != nil || !bytes.Contains(machines, []byte("microvm")) {
		return fmt.Errorf("qemu: %s has no microvm machine: %v", p.binary, err)
	}
	accel := opts.Accel
	if accel == "" {
		accel = AccelAuto
	}
	kvm, why := kvmUsable()
	switch accel {
	case AccelAuto:
		p.accel = AccelTCG
		if kvm {
			p.accel = AccelKVM
		}
	case AccelKVM:
		if !kvm {
			return fmt.Errorf("qemu: accel = \"kvm\" but KVM is not usable on this host: %s; use accel = \"tcg\" or \"auto\"", why)
		}
		p.accel = AccelKVM
	case AccelTCG:
		p.accel = AccelTCG
	default:
		return fmt.Errorf("qemu: accel %q: want auto, kvm or tcg", accel)
	}
	if p.accel == AccelTCG {
		p.tscKHz = HostTSCKHz()
	}
	p.log.Info("qemu provider ready", zap.String("qemu", p.version), zap.String("accel", p.accel),
		zap.String("kvm", why), zap.Int("boot_slots", p.bootSlots))
	return nil
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte("\n"))
	return string(line)
}

// kvmUsable says whether KVM can run an ordinary guest here: /dev/kvm
// opens read-write and the CPU has hardware virtualization (vmx or svm).
// A host whose /dev/kvm is KVM's PVM variant (no vmx/svm flag) runs only
// PVM guest kernels, so it counts as no KVM.
func kvmUsable() (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("cannot open /dev/kvm: %v", err)
	}
	f.Close()
	cpu, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false, fmt.Sprintf("cannot read /proc/cpuinfo: %v", err)
	}
	for _, line := range strings.Split(string(cpu), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				if f == "vmx" || f == "svm" {
					return true, "usable (/dev/kvm and " + f + ")"
				}
			}
			return false, "/dev/kvm is there but the CPU shows no vmx or svm flag (a PVM or nested host without hardware virtualization)"
		}
	}
	return false, "no CPU flags in /proc/cpuinfo"
}

// HostTSCKHz is the host's CPU clock in kHz, from /proc/cpuinfo, or 0.
// Under TCG the guest kernel is told it (tsc_early_khz): without it a
// microvm guest may find its TSC unstable and hang, as it has no other
// clock source.
func HostTSCKHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil && mhz > 0 {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}

// LogPath returns the file that receives the serial console of VM id;
// Run keeps the previous part in LogPath(id)+".1". Both are kept after
// the VM is gone.
func (p *Provider) LogPath(id string) string { return filepath.Join(p.logDir, id+".log") }

func (p *Provider) instanceDir(id string) string { return filepath.Join(p.instancesDir, id) }

// leftoverAge is how old an import staging directory must be before New
// removes it (another agent sharing the directory may be importing).
const leftoverAge = time.Hour

// removeLeftovers deletes import staging directories left by a crash and
// instance directories without metadata whose launch was interrupted
// (under their lock, so never one being launched).
func (p *Provider) removeLeftovers() {
	if des, err := os.ReadDir(p.imagesDir); err == nil {
		for _, de := range des {
			path := filepath.Join(p.imagesDir, de.Name())
			if fi, err := os.Lstat(path); err == nil && strings.HasPrefix(de.Name(), ".import-") && time.Since(fi.ModTime()) > leftoverAge {
				_ = os.RemoveAll(path)
			}
		}
	}
	des, err := os.ReadDir(p.instancesDir)
	if err != nil {
		return
	}
	for _, de := range des {
		id := de.Name()
		if instance.CheckID(id) != nil {
			continue
		}
		if _, err := os.Lstat(filepath.Join(p.instanceDir(id), metaFile)); err == nil {
			continue
		}
		l, err := p.tryLock(id)
		if err != nil {
			continue
		}
		p.removeUnrecorded(id)
		l.unlock()
	}
}
