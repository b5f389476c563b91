// Package agent wires one immutd agent together: config watching, the raft
// node, probes, providers, the leader's reconcile loop, metrics and the
// HTTP API. It owns the agent's lifecycle (start, reload, graceful stop)
// and the status an operator reads.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/cluster"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/probe"
	"github.com/immutd/immutd/internal/provider/local"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Agent is one running immutd agent.
type Agent struct {
	cfg   *config.Agent
	log   *zap.Logger
	level zap.AtomicLevel
	m     *metrics

	node      *cluster.Node
	prober    *probe.Prober
	providers map[string]reconcile.Provider
	api       *api.Server

	wake chan struct{}

	mu sync.Mutex
	// latest valid fleet set read from the fleets directory.
	fleets     *config.FleetSet
	fleetsHash string
	configErr  *ConfigStatus
	lastStatus *Status
	autoDrain  bool
	interval   time.Duration
	firstSeen  map[string]time.Time
	lastPass   time.Time
	// knownFleets have metric series exported.
	knownFleets map[string]bool
}

// ConfigStatus is the state of the fleet files as this agent last read them.
type ConfigStatus struct {
	OK       bool      `json:"ok"`
	Error    string    `json:"error,omitempty"`
	At       time.Time `json:"at"`
	Hash     string    `json:"hash,omitempty"`
	Fleets   int       `json:"fleets"`
	Rejected int       `json:"rejected_total"`
}

// NewLogger builds the agent's JSON logger.
func NewLogger(level string) (*zap.Logger, zap.AtomicLevel, error) {
	lvl := zap.NewAtomicLevel()
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, lvl, fmt.Errorf("log level %q: %w", level, err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "time"
	enc.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(os.Stderr), lvl)
	return zap.New(core), lvl, nil
}

// New prepares an agent; Run starts it.
func New(cfg *config.Agent, log *zap.Logger, level zap.AtomicLevel) (*Agent, error) {
	a := &Agent{cfg: cfg, log: log, level: level, m: newMetrics(), wake: make(chan struct{}, 1),
		providers: map[string]reconcile.Provider{}, autoDrain: cfg.AutoDrainRemovedFleets,
		interval: cfg.ReconcileInterval, firstSeen: map[string]time.Time{}, knownFleets: map[string]bool{}}
	if err := a.m.bridgeRaftMetrics(); err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	lp, err := local.New(local.Options{Dir: cfg.Local.Dir, BindHost: cfg.Local.BindHost, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("agent: local provider: %w", err)
	}
	a.providers["local"] = lp
	a.prober = probe.New(probe.Options{Logger: log, Registerer: a.m.reg,
		OnChange: func(string, probe.Verdict) { a.Wake() }})
	return a, nil
}

// Wake asks the leader loop for a reconcile pass now.
func (a *Agent) Wake() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run runs the agent until ctx is cancelled or a component fails.
// reload delivers SIGHUPs.
func (a *Agent) Run(ctx context.Context, reload <-chan struct{}) error {
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("agent: http listen on %s: %w", a.cfg.HTTPAddr, err)
	}
	node, err := cluster.Open(cluster.Config{DataDir: a.cfg.DataDir, BindAddr: a.cfg.Cluster.BindAddr,
		Advertise: a.cfg.Cluster.AdvertiseAddr, Bootstrap: true, Logger: a.log.Named("raft")})
	if err != nil {
		ln.Close()
		return err
	}
	a.node = node
	a.log.Info("agent started", zap.String("node", a.cfg.NodeName), zap.String("node_id", node.ID()),
		zap.String("http_addr", ln.Addr().String()), zap.String("fleets_dir", a.cfg.FleetsDir), zap.String("version", Version))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	run := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}

	a.api = api.New(a, a.m.reg, a.log.Named("api"))
	srv := &http.Server{Handler: a.api.Handler(), ReadHeaderTimeout: 10 * time.Second}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()

	watcher := config.NewWatcher(a.cfg.FleetsDir, config.WatchOptions{})
	run("watch", watcher.Run)
	run("config", func(ctx context.Context) error { return a.consumeConfig(ctx, watcher.Updates()) })
	run("probe", a.prober.Run)
	run("leadership", a.leadership)
	run("probe-targets", a.syncProbeTargets)
	run("systemd", a.notifySystemd)

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-errc:
			runErr = err
			a.log.Error("component failed", zap.Error(err))
			break loop
		case <-reload:
			a.reloadAgentConfig()
		}
	}
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(shutdownCtx)
	stop()
	wg.Wait()
	if err := node.Shutdown(); err != nil {
		a.log.Warn("raft shutdown", zap.Error(err))
	}
	a.log.Info("agent stopped")
	return runErr
}

// consumeConfig takes updates from the fleets directory watcher.
func (a *Agent) consumeConfig(ctx context.Context, updates <-chan config.Update) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u := <-updates:
			a.mu.Lock()
			prev := a.configErr
			st := &ConfigStatus{At: u.At, Hash: u.Hash}
			if prev != nil {
				st.Rejected = prev.Rejected
			}
			if u.Err != nil {
				st.Error = u.Err.Error()
				st.Rejected++
				a.configErr = st
				a.mu.Unlock()
				a.m.reloadOK.Set(0)
				a.m.reloadFailures.Inc()
				a.log.Error("fleet files rejected; the last good desired state stays in force",
					zap.String("dir", a.cfg.FleetsDir), zap.String("reason", "config_invalid"), zap.Error(u.Err))
				a.recordEvent(ctx, state.Event{Action: "config_rejected", Reason: "config_invalid", Evidence: splitLines(u.Err.Error())})
				continue
			}
			st.OK = true
			st.Fleets = len(u.Set.Fleets)
			a.configErr = st
			a.fleets, a.fleetsHash = u.Set, u.Hash
			a.mu.Unlock()
			a.m.reloadOK.Set(1)
			a.m.reloadTime.Set(float64(u.At.Unix()))
			a.log.Info("fleet files loaded", zap.String("dir", a.cfg.FleetsDir), zap.Int("fleets", len(u.Set.Fleets)), zap.String("hash", short(u.Hash)))
			a.Wake()
		}
	}
}

// reloadAgentConfig applies the settings of the agent file that can change
// at runtime (SIGHUP); the others need a restart and are reported.
func (a *Agent) reloadAgentConfig() {
	next, err := config.LoadAgent(a.cfg.File)
	if err != nil {
		a.log.Error("agent config reload rejected; keeping the running configuration", zap.String("file", a.cfg.File), zap.Error(err))
		return
	}
	if err := a.level.UnmarshalText([]byte(next.LogLevel)); err != nil {
		a.log.Error("agent config reload: log level", zap.Error(err))
	}
	a.mu.Lock()
	a.autoDrain = next.AutoDrainRemovedFleets
	a.interval = next.ReconcileInterval
	a.mu.Unlock()
	var restart []string
	if next.DataDir != a.cfg.DataDir {
		restart = append(restart, "data_dir")
	}
	if next.HTTPAddr != a.cfg.HTTPAddr {
		restart = append(restart, "http_addr")
	}
	if next.FleetsDir != a.cfg.FleetsDir {
		restart = append(restart, "fleets_dir")
	}
	if next.Cluster != a.cfg.Cluster {
		restart = append(restart, "cluster")
	}
	if next.Local != a.cfg.Local || next.Docker != a.cfg.Docker {
		restart = append(restart, "provider")
	}
	a.log.Info("agent config reloaded", zap.String("log_level", next.LogLevel), zap.Bool("auto_drain_removed_fleets", next.AutoDrainRemovedFleets),
		zap.Duration("reconcile_interval", next.ReconcileInterval), zap.Strings("changed_need_restart", restart))
	a.Wake()
}

// notifySystemd tells systemd the agent is ready and pings the watchdog
// while the leadership loop keeps answering.
func (a *Agent) notifySystemd(ctx context.Context) error {
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			// Only ping while raft answers: a wedged agent gets restarted.
			if a.node.Stats() != nil {
				_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			}
		}
	}
}

// syncProbeTargets keeps the prober's targets equal to the recorded
// instances, on every agent.
func (a *Agent) syncProbeTargets(ctx context.Context) error {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		changes := a.node.Changes()
		a.setProbeTargets()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changes:
		case <-t.C:
		}
	}
}

func (a *Agent) setProbeTargets() {
	now := time.Now()
	var targets []probe.Target
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[string]bool{}
	a.node.Read(func(st *state.State) {
		for _, in := range st.Instances {
			f := st.Fleets[in.Fleet]
			if f == nil || in.Address == "" {
				continue
			}
			seen[in.ID] = true
			since, ok := a.firstSeen[in.ID]
			if !ok {
				since = now
				a.firstSeen[in.ID] = now
			}
			targets = append(targets, probe.Target{InstanceID: in.ID, Fleet: in.Fleet, Address: in.Address, Checks: f.Spec.Health.Checks, Since: since})
		}
	})
	for id := range a.firstSeen {
		if !seen[id] {
			delete(a.firstSeen, id)
		}
	}
	a.prober.Set(targets)
}

func (a *Agent) recordEvent(ctx context.Context, e state.Event) {
	if a.node == nil || !a.node.IsLeader() {
		return
	}
	e.Time = time.Now()
	e.Node = a.cfg.NodeName
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := a.node.Apply(cctx, &state.RecordEvents{Events: []state.Event{e}}); err != nil {
		a.log.Warn("could not record event", zap.String("action", e.Action), zap.Error(err))
	}
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
