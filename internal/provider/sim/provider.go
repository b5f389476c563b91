package sim

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/pathmatch"
	"github.com/immutd/immutd/internal/provider/hostdir"
)

// Name is the provider's name as fleet files spell it.
const Name = "sim"

// DefaultBinary is the host program, looked for beside the running
// executable, then on PATH.
const DefaultBinary = "immutd-simhost"

// Bounds of Options.
const (
	MaxLaunchLatency = 10 * time.Minute
	// maxSocketPath is what a unix socket address holds (108 bytes with
	// the terminating NUL).
	maxSocketPath = 107
	// hostStartWait bounds how long a starting host may take to serve.
	hostStartWait = 15 * time.Second
	// stubbornArg in a template's args makes an instance ignore a stop
	// (the sample app's flag of that name).
	stubbornArg = "-ignore-sigterm"
)

// Options configures a Provider.
type Options struct {
	// Dir is the provider directory (see the package documentation);
	// agents that share it share the instances. Required.
	Dir string
	// Binary is the host program. Default: immutd-simhost beside the
	// running executable, else from PATH.
	Binary string
	// LaunchLatency is spent in every Launch before it returns. Default 0.
	LaunchLatency time.Duration
	// FailureRate is the fraction of launches that fail with a
	// retryable error, from 0 to 1. Default 0.
	FailureRate float64
	// HealthFlipRate is the fraction of healthy instances per minute
	// whose health flips to failing, from 0 to 1. Default 0. The hosts
	// take the value of the newest provider over the directory.
	HealthFlipRate float64
	// Seed makes the launch failures and health flips reproducible.
	Seed uint64
	// HostCapacity is how many instances each host this provider starts
	// serves. Default DefaultHostCapacity.
	HostCapacity int
	// HostIdleExit, when positive, makes the hosts this provider starts
	// exit after they served no instance for that long. Default: never.
	HostIdleExit time.Duration
	// Logger receives the provider's logs. Default: no logging.
	Logger *zap.Logger
}

// Provider runs simulated instances on host processes. Its methods are
// safe for concurrent use, also by several providers (agents) sharing
// one directory.
type Provider struct {
	dir, hostsDir, idsDir, imagesDir string
	binary                           string
	latency                          time.Duration
	failureRate, flipRate            float64
	seed                             uint64
	capacity                         int
	idleExit                         time.Duration
	log                              *zap.Logger

	// placeMu and placeLock (flocked) serialize placement, the first
	// within this provider, the second across providers.
	placeMu   sync.Mutex
	placeLock *os.File

	mu    sync.Mutex
	hosts map[int]*hostClient
	// listed says, for every instance the last List saw, whether it had
	// simulated in-place changes: Inspect asks a host only for those, and
	// for instances it did not list.
	listed   map[string]bool
	attempts map[string]uint64
	images   map[string]imageSpec
}

// New opens (or makes) the provider directory, finds the host program
// and tells the running hosts the health flip rate.
func New(opts Options) (*Provider, error) {
	if opts.Dir == "" {
		return nil, errors.New("sim: dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("sim: dir: %w", err)
	}
	p := &Provider{dir: dir, hostsDir: filepath.Join(dir, "hosts"), idsDir: filepath.Join(dir, "ids"), imagesDir: filepath.Join(dir, "images"),
		latency: opts.LaunchLatency, failureRate: opts.FailureRate, flipRate: opts.HealthFlipRate, seed: opts.Seed,
		capacity: opts.HostCapacity, idleExit: opts.HostIdleExit, log: opts.Logger,
		hosts: map[int]*hostClient{}, attempts: map[string]uint64{}, images: map[string]imageSpec{}}
	switch {
	case p.latency < 0 || p.latency > MaxLaunchLatency:
		return nil, fmt.Errorf("sim: launch latency %s: want 0 to %s", p.latency, MaxLaunchLatency)
	case math.IsNaN(p.failureRate) || p.failureRate < 0 || p.failureRate > 1:
		return nil, fmt.Errorf("sim: failure rate %v: want a fraction from 0 to 1", p.failureRate)
	case p.idleExit < 0:
		return nil, fmt.Errorf("sim: host idle exit %s must not be negative", p.idleExit)
	}
	if err := checkFlipRate(p.flipRate); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	if p.capacity == 0 {
		p.capacity = DefaultHostCapacity
	}
	if p.capacity < 1 || p.capacity > MaxHostCapacity {
		return nil, fmt.Errorf("sim: host capacity %d: want 1 to %d", p.capacity, MaxHostCapacity)
	}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	p.log = p.log.Named("sim")
	if n := len(p.sockPath(MaxHosts - 1)); n > maxSocketPath {
		return nil, fmt.Errorf("sim: dir %s is too long: its host sockets' paths (%d bytes) exceed the %d a unix socket takes; use a shorter dir", dir, n, maxSocketPath)
	}
	if p.binary, err = findBinary(opts.Binary); err != nil {
		return nil, err
	}
	// The directory holds sockets that launch and kill: the agent's user only.
	for _, d := range []string{dir, p.hostsDir, p.idsDir, p.imagesDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
	}
	if p.placeLock, err = os.OpenFile(filepath.Join(dir, "place.lock"), os.O_CREATE|os.O_RDWR, 0o600); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hosts, err := p.liveHosts(ctx)
	if err != nil {
		p.placeLock.Close()
		return nil, err
	}
	for _, h := range hosts {
		if err := h.do(ctx, "POST", "/v1/config", hostConfig{HealthFlipRate: p.flipRate, Seed: p.seed}, nil); err != nil {
			p.log.Warn("could not configure a sim host", zap.Int("host", h.index), zap.Error(err))
		}
	}
	p.log.Info("sim provider ready (a benchmark tool)", zap.String("dir", dir), zap.Int("hosts", len(hosts)),
		zap.Duration("launch_latency", p.latency), zap.Float64("failure_rate", p.failureRate),
		zap.Float64("health_flip_rate", p.flipRate), zap.Uint64("seed", p.seed))
	return p, nil
}

// Close releases the provider's files. Hosts and instances keep running.
func (p *Provider) Close() error {
	p.mu.Lock()
	for _, h := range p.hosts {
		h.close()
	}
	p.mu.Unlock()
	return p.placeLock.Close()
}

// Dir returns the provider directory.
func (p *Provider) Dir() string { return p.dir }

func findBinary(bin string) (string, error) {
	if bin == "" {
		if exe, err := os.Executable(); err == nil {
			if c := filepath.Join(filepath.Dir(exe), DefaultBinary); isExecutable(c) {
				return c, nil
			}
		}
		bin = DefaultBinary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("sim: host program %s not found beside the agent nor on PATH (go build -o bin/ ./cmd/immutd-simhost): %w", bin, err)
	}
	return filepath.Abs(path)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func (p *Provider) sockPath(k int) string { return filepath.Join(p.hostsDir, strconv.Itoa(k)+".sock") }
func (p *Provider) lockPath(k int) string { return filepath.Join(p.hostsDir, strconv.Itoa(k)+".lock") }
func (p *Provider) idPath(id string) string {
	return filepath.Join(p.idsDir, id)
}

// Register records the agent as a user of this provider's directory.
func (p *Provider) Register(nodeID, name string) error {
	if err := hostdir.Register(p.dir, nodeID, name); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	return nil
}

// CheckServers says whether every server of the cluster shares this
// directory: the instances are loopback sockets of this machine.
func (p *Provider) CheckServers(ids []string) error {
	return hostdir.CheckServers(Name, p.dir, ids)
}

// observed converts a host's record.
func (p *Provider) observed(k int, r record) instance.Observed {
	o := instance.Observed{ID: r.ID, Fleet: r.Fleet, ImageDigest: r.ImageDigest, TemplateHash: r.TemplateHash,
		Phase: instance.Running, Address: r.Address, StartedAt: r.StartedAt, Location: p.sockPath(k)}
	if _, port, ok := strings.Cut(r.Address, ":"); ok {
		o.ProviderRef = "h" + strconv.Itoa(k) + ":" + port
	}
	if r.Exited {
		o.Phase, o.ExitReason = instance.Exited, r.ExitReason
	}
	return o
}

// List returns every instance of every running host: one request to each.
func (p *Provider) List(ctx context.Context) ([]instance.Observed, error) {
	hosts, err := p.liveHosts(ctx)
	if err != nil {
		return nil, err
	}
	lists := make([][]record, len(hosts))
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { lists[i], errs[i] = h.list(ctx) })
	}
	wg.Wait()
	n := 0
	for i := range hosts {
		if errs[i] != nil {
			if gone, _ := p.hostGone(hosts[i].index); gone {
				lists[i] = nil // it died meanwhile, with its instances
				continue
			}
			return nil, fmt.Errorf("sim: list host %d: %w", hosts[i].index, errs[i])
		}
		n += len(lists[i])
	}
	out := make([]instance.Observed, 0, n)
	listed := make(map[string]bool, n)
	for i, h := range hosts {
		h.setCount(len(lists[i]))
		for _, r := range lists[i] {
			out = append(out, p.observed(h.index, r))
			listed[r.ID] = r.Changed
		}
	}
	p.mu.Lock()
	p.listed = listed
	p.mu.Unlock()
	return out, nil
}

// lookup finds instance id through its placement; ok is false when no
// running host has it.
func (p *Provider) lookup(ctx context.Context, id string) (k int, r record, ok bool, err error) {
	k, placed, err := p.readPlacement(id)
	if err != nil || !placed {
		return 0, r, false, err
	}
	h, alive, err := p.hostAt(ctx, k)
	if err != nil || !alive {
		return k, r, false, err
	}
	found, err := h.get(ctx, id, &r)
	if err != nil {
		if gone, _ := p.hostGone(k); gone {
			return k, r, false, nil
		}
		return k, r, false, err
	}
	return k, r, found, nil
}

// Launch makes instance req.InstanceID, or returns the one of that id.
func (p *Provider) Launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	obs, err := p.launch(ctx, req)
	if err != nil {
		return instance.Observed{}, fmt.Errorf("sim: launch %s: %w", req.InstanceID, err)
	}
	return obs, nil
}

func (p *Provider) launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	if err := req.Check(); err != nil {
		return instance.Observed{}, err
	}
	cr := createRequest{Fleet: req.Fleet, ImageDigest: req.ImageDigest, TemplateHash: req.TemplateHash,
		Stubborn: slices.Contains(req.Launch.Args, stubbornArg)}
	if err := cr.check(); err != nil {
		return instance.Observed{}, instance.Permanent(err)
	}
	if p.latency > 0 {
		t := time.NewTimer(p.latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return instance.Observed{}, ctx.Err()
		case <-t.C:
		}
	}
	if k, r, ok, err := p.lookup(ctx, req.InstanceID); err != nil {
		return instance.Observed{}, err
	} else if ok {
		return p.observed(k, r), nil
	}
	img, err := p.image(req.ImageDigest)
	if err != nil {
		return instance.Observed{}, err
	}
	if c := req.Launch.Command; len(c) > 0 && filepath.IsAbs(c[0]) && !isExecutable(c[0]) {
		return instance.Observed{}, instance.Permanent(fmt.Errorf("command %s: not an executable file", c[0]))
	}
	if p.fails(req.InstanceID) {
		return instance.Observed{}, fmt.Errorf("simulated launch failure (failure_rate %v)", p.failureRate)
	}
	if img.ExitAfter != nil {
		cr.ExitAfter = max(time.Duration(*img.ExitAfter), time.Nanosecond)
	}
	k, r, err := p.place(ctx, req.InstanceID, cr)
	if err != nil {
		return instance.Observed{}, err
	}
	p.mu.Lock()
	delete(p.attempts, req.InstanceID)
	p.mu.Unlock()
	return p.observed(k, r), nil
}

// fails draws whether this attempt at launching id fails: reproducible
// from the seed, the id and how many attempts this provider made.
func (p *Provider) fails(id string) bool {
	if p.failureRate <= 0 {
		return false
	}
	p.mu.Lock()
	n := p.attempts[id]
	p.attempts[id] = n + 1
	p.mu.Unlock()
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], p.seed)
	binary.BigEndian.PutUint64(b[8:], n)
	s := sha256.New()
	s.Write(b[:8])
	s.Write([]byte(id))
	s.Write(b[8:])
	u := binary.BigEndian.Uint64(s.Sum(nil))
	return float64(u>>11)/(1<<53) < p.failureRate
}

// lockPlace takes the placement lock, within the process and across.
func (p *Provider) lockPlace(ctx context.Context) (func(), error) {
	p.placeMu.Lock()
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		err := unix.Flock(int(p.placeLock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(p.placeLock.Fd()), unix.LOCK_UN)
				p.placeMu.Unlock()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			p.placeMu.Unlock()
			return nil, fmt.Errorf("placement lock: %w", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			p.placeMu.Unlock()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// place creates instance id on a host with room, starting one when every
// running host is full, and records where.
func (p *Provider) place(ctx context.Context, id string, cr createRequest) (int, record, error) {
	unlock, err := p.lockPlace(ctx)
	if err != nil {
		return 0, record{}, err
	}
	defer unlock()
	// Placed meanwhile by another provider: create there (idempotent).
	if k, placed, err := p.readPlacement(id); err != nil {
		return 0, record{}, err
	} else if placed {
		if h, alive, err := p.hostAt(ctx, k); err != nil {
			return 0, record{}, err
		} else if alive {
			r, _, err := h.create(ctx, id, cr)
			if err == nil {
				return k, r, nil
			}
			if !errors.Is(err, errFull) {
				return 0, record{}, err
			}
		}
	}
	hosts, err := p.liveHosts(ctx)
	if err != nil {
		return 0, record{}, err
	}
	try := func(h *hostClient) (record, bool, error) {
		if err := p.writePlacement(id, h.index); err != nil {
			return record{}, false, err
		}
		r, _, err := h.create(ctx, id, cr)
		if errors.Is(err, errFull) {
			return record{}, false, nil
		}
		if err != nil {
			_ = os.Remove(p.idPath(id))
			return record{}, false, err
		}
		return r, true, nil
	}
	for refreshed := false; ; refreshed = true {
		for _, h := range hosts {
			if !h.hasRoom() {
				continue
			}
			if r, ok, err := try(h); err != nil || ok {
				return h.index, r, err
			}
		}
		if refreshed {
			break
		}
		// Counts may be stale: other providers terminate too.
		for _, h := range hosts {
			if err := h.refresh(ctx); err != nil {
				return 0, record{}, fmt.Errorf("host %d: %w", h.index, err)
			}
		}
	}
	h, err := p.startHost(ctx)
	if err != nil {
		_ = os.Remove(p.idPath(id))
		return 0, record{}, err
	}
	r, ok, err := try(h)
	if err == nil && !ok {
		err = fmt.Errorf("host %d, just started, is full", h.index)
	}
	return h.index, r, err
}

// readPlacement reads which host id was placed on.
func (p *Provider) readPlacement(id string) (int, bool, error) {
	b, err := os.ReadFile(p.idPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	k, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || k < 0 || k >= MaxHosts {
		// Unreadable: as if never placed; the next placement rewrites it.
		return 0, false, nil
	}
	return k, true, nil
}

// writePlacement records id's host, atomically. The placement lock is held.
func (p *Provider) writePlacement(id string, k int) error {
	tmp := filepath.Join(p.idsDir, ".tmp-"+id)
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(k)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.idPath(id))
}

// Terminate removes instance id. A missing instance is success. One
// launched with -ignore-sigterm in its args holds out for the grace.
func (p *Provider) Terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := p.terminate(ctx, id, grace); err != nil {
		return fmt.Errorf("sim: terminate %s: %w", id, err)
	}
	return nil
}

func (p *Provider) terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := instance.CheckID(id); err != nil {
		return err
	}
	k, r, found, err := p.lookup(ctx, id)
	if err != nil {
		return err
	}
	if found && r.Stubborn && !r.Exited && grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	unlock, err := p.lockPlace(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	// Placed elsewhere meanwhile (a relaunch after the host died)?
	if k2, placed, err := p.readPlacement(id); err != nil {
		return err
	} else if !placed {
		return nil
	} else {
		k = k2
	}
	if h, alive, err := p.hostAt(ctx, k); err != nil {
		return err
	} else if alive {
		if err := h.do(ctx, "DELETE", "/v1/instances/"+id, nil, nil); err != nil {
			if gone, _ := p.hostGone(k); !gone {
				return err
			}
		} else {
			h.addCount(-1)
		}
	}
	if err := os.Remove(p.idPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Inspect reports the simulated in-place changes of an instance (made
// through its host's control API) as drift; an instance no running host
// has is instance.ErrGone.
func (p *Provider) Inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error) {
	if err := instance.CheckID(obs.ID); err != nil {
		return nil, err
	}
	ign, err := pathmatch.Compile(ignore)
	if err != nil {
		return nil, err
	}
	// The listing every pass makes says which instances changed: the
	// others cost no request (a provider whose listing carries its drift
	// signal, as the benchmarks want the agent's cost, not the host's).
	p.mu.Lock()
	changed, listed := p.listed[obs.ID]
	p.mu.Unlock()
	if listed && !changed {
		return nil, nil
	}
	_, r, found, err := p.lookup(ctx, obs.ID)
	if err != nil {
		return nil, fmt.Errorf("sim: inspect %s: %w", obs.ID, err)
	}
	if !found {
		return nil, fmt.Errorf("sim: inspect %s: %w", obs.ID, instance.ErrGone)
	}
	var ev []string
	for _, m := range r.Mutations {
		if !ign.Match(m) {
			ev = append(ev, "added "+m)
		}
	}
	if len(ev) == 0 {
		return nil, nil
	}
	return &instance.Finding{Kind: instance.DriftMutated, Evidence: ev}, nil
}
