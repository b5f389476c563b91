// Package agent wires one immutd agent together: config watching, the raft
// node, probes, providers, the leader's reconcile loop, metrics and the
// HTTP API. It owns the agent's lifecycle (start, reload, graceful stop)
// and the status an operator reads.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	stdlog "log"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	autopilot "github.com/hashicorp/raft-autopilot"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/cluster"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/mtls"
	"github.com/immutd/immutd/internal/probe"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/secretfile"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/web"
)

// Agent is one running immutd agent.
type Agent struct {
	// consulJoin is set with cluster { join_consul { ... } }, before the
	// agent's loops start.
	consulJoin *consulJoin
	cfg        *config.Agent
	log        *zap.Logger
	level      zap.AtomicLevel
	m          *metrics
	quorum     QuorumRule
	// probeAgents is cluster.probe_agents: how many voters probe each
	// instance (0: all of them).
	probeAgents int

	node      *cluster.Node
	prober    *probe.Prober
	providers map[string]reconcile.Provider
	api       *api.Server
	identity  *mtls.Identity
	rpcClient *http.Client
	votes     *votes
	names     nameBook

	wake           chan struct{}
	proposeNow     chan struct{}
	verdictChanged chan struct{}
	term           atomic.Pointer[leader.Term]
	pilotRef       atomic.Pointer[autopilot.Autopilot]
	// probesCut is the fault-injection switch (see watchFaults).
	probesCut atomic.Bool
	// started is closed once Run has opened raft and its listeners.
	started  chan struct{}
	httpAddr atomic.Value // string
	// stop ends Run (cluster leave asks for it).
	stop     chan struct{}
	stopOnce sync.Once

	mu sync.Mutex
	// latest valid fleet set read from the fleets directory.
	fleets     *config.FleetSet
	fleetFiles []config.File
	fleetsHash string
	// startHash is the hash of the first valid fleet set this process read;
	// settledHash the last one the leader judged (committed or not needed).
	startHash   string
	settledHash string
	configErr   *api.ConfigStatus
	lastStatus  *leader.Snapshot
	autoDrain   bool
	interval    time.Duration
	limits      config.Limits
	firstSeen   map[string]time.Time
	lastPass    time.Time
	token       string
	// knownFleets have metric series exported.
	knownFleets map[string]bool
	// dataDir is the last check of the data directory.
	dataDir api.DataDirStatus
}

// NewLogger builds the agent's logger on stderr: JSON lines (for journald
// and log shippers), or readable lines when stderr is a terminal.
// IMMUTD_LOG_FORMAT=json or console chooses either way.
func NewLogger(level string) (*zap.Logger, zap.AtomicLevel, error) {
	lvl := zap.NewAtomicLevel()
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, lvl, fmt.Errorf("log level %q: %w", level, err)
	}
	format, err := logFormat(isTerminal(os.Stderr), os.Getenv("IMMUTD_LOG_FORMAT"))
	if err != nil {
		return nil, lvl, err
	}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "time"
	enc.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	encoder := zapcore.NewJSONEncoder(enc)
	if format == "console" {
		enc.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		enc.EncodeCaller = nil
		encoder = zapcore.NewConsoleEncoder(enc)
	}
	core := zapcore.NewCore(encoder, zapcore.Lock(os.Stderr), lvl)
	return zap.New(core), lvl, nil
}

// logFormat is json or console: what IMMUTD_LOG_FORMAT says, else
// console on a terminal and json elsewhere.
func logFormat(terminal bool, env string) (string, error) {
	switch env {
	case "json", "console":
		return env, nil
	case "":
		if terminal {
			return "console", nil
		}
		return "json", nil
	}
	return "", fmt.Errorf("IMMUTD_LOG_FORMAT=%q: want json or console", env)
}

// isTerminal says whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Options are what a caller may supply instead of the defaults.
type Options struct {
	// Providers replaces the providers the configuration names (tests
	// run an agent over fakes this way). Nil means the registry's.
	Providers map[string]reconcile.Provider
}

// New prepares an agent; Run starts it.
func New(cfg *config.Agent, log *zap.Logger, level zap.AtomicLevel) (*Agent, error) {
	return NewWith(cfg, log, level, Options{})
}

// NewWith prepares an agent with options.
func NewWith(cfg *config.Agent, log *zap.Logger, level zap.AtomicLevel, opts Options) (*Agent, error) {
	q, err := ParseQuorum(cfg.Cluster.HealthQuorum)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: log, level: level, m: newMetrics(), quorum: q, probeAgents: cfg.Cluster.ProbeAgents, votes: newVotes(),
		wake: make(chan struct{}, 1), proposeNow: make(chan struct{}, 1), verdictChanged: make(chan struct{}, 1), stop: make(chan struct{}),
		started: make(chan struct{}), providers: opts.Providers, autoDrain: cfg.AutoDrainRemovedFleets,
		interval: cfg.ReconcileInterval, limits: cfg.Limits, firstSeen: map[string]time.Time{}, knownFleets: map[string]bool{}}
	if err := a.m.bridgeRaftMetrics(); err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	// The agent file was loaded to get here.
	a.m.agentReloadOK.Set(1)
	a.m.agentReloadTime.Set(float64(time.Now().Unix()))
	if a.providers == nil {
		if a.providers, err = providerRegistry(cfg, log); err != nil {
			return nil, err
		}
	}
	if err := a.loadToken(); err != nil {
		return nil, err
	}
	a.prober = probe.New(probe.Options{Logger: log, Registerer: a.m.reg, Fault: a.probeFault,
		OnChange: func(string, probe.Verdict) {
			a.Wake()
			select {
			case a.verdictChanged <- struct{}{}:
			default:
			}
		}})
	return a, nil
}

// loadToken reads the API token. The default token file
// (<data_dir>/api-token) is created with a random token when it does not
// exist yet, so that state changes need a credential in every
// configuration; a token file the operator named must exist.
func (a *Agent) loadToken() error {
	path := a.cfg.API.TokenFile
	if !a.cfg.API.TokenFileSet {
		if err := createToken(path); err != nil {
			return fmt.Errorf("agent: api token: %w", err)
		}
	}
	tok, err := readToken("api token file", path)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.mu.Lock()
	a.token = tok
	a.mu.Unlock()
	return nil
}

// readToken reads a token file (see secretfile.ReadToken).
func readToken(what, path string) (string, error) { return secretfile.ReadToken(what, path) }

// createToken writes a new random token to path unless the file exists.
func createToken(path string) error {
	if _, err := os.Lstat(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return nil // exists (readToken judges it), or a problem readToken reports
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(hex.EncodeToString(raw) + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// clusterAuth is how the cluster port authenticates peers: the cluster's
// certificates, the token of the insecure plaintext mode, or, for a
// single agent without either, a TLS identity made now that no other
// process has, so that the port accepts nobody.
func (a *Agent) clusterAuth() (mtls.Auth, error) {
	c := a.cfg.Cluster
	switch {
	case c.TLS.Enabled():
		id, err := mtls.Load(mtls.Config{CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile, ServerName: c.TLS.ServerName})
		if err != nil {
			return mtls.Auth{}, fmt.Errorf("agent: cluster tls: %w", err)
		}
		a.identity = id
		return mtls.Auth{Identity: id}, nil
	case c.Insecure.Enabled():
		tok, err := readToken("cluster token file", c.Insecure.TokenFile)
		if err != nil {
			return mtls.Auth{}, fmt.Errorf("agent: cluster insecure_plaintext: %w", err)
		}
		a.log.Warn("cluster traffic is NOT encrypted: insecure_plaintext is set; anyone who can read loopback traffic on this host can learn the cluster token",
			zap.String("token_file", c.Insecure.TokenFile))
		return mtls.Auth{Token: []byte(tok)}, nil
	default:
		id, err := mtls.Ephemeral(a.cfg.NodeName, c.TLS.ServerName)
		if err != nil {
			return mtls.Auth{}, fmt.Errorf("agent: %w", err)
		}
		a.identity = id
		return mtls.Auth{Identity: id}, nil
	}
}

func (a *Agent) clusterAuthMode() string {
	switch {
	case a.cfg.Cluster.Insecure.Enabled():
		return "insecure_plaintext_token"
	case a.identity != nil && a.identity.IsEphemeral():
		return "mtls_single_agent"
	default:
		return "mtls"
	}
}

// newServer is an HTTP server with every timeout set, so that a slow or
// silent client costs a connection for a bounded time only. Writes are
// not bounded: some answers (drain, resolve) wait for the cluster.
func newServer(h http.Handler, log *zap.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          stdLogAtDebug(log),
	}
}

// Started is closed once Run has opened raft and its listeners.
func (a *Agent) Started() <-chan struct{} { return a.started }

// HTTPAddr is the address the API listens on (after Started).
func (a *Agent) HTTPAddr() string {
	s, _ := a.httpAddr.Load().(string)
	return s
}

// TokenFile is where the API token is kept.
func (a *Agent) TokenFile() string { return a.cfg.API.TokenFile }

// Token returns the API bearer token.
func (a *Agent) Token() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.token
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
	c := a.cfg.Cluster
	auth, err := a.clusterAuth()
	if err != nil {
		return err
	}
	for _, w := range a.cfg.Warnings {
		a.log.Warn("configuration warning", zap.String("file", a.cfg.File), zap.String("warning", w.String()))
	}
	if a.consulJoin, err = a.newConsulJoin(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	apiLn, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("agent: http listen on %s: %w", a.cfg.HTTPAddr, err)
	}
	clusterLn, err := net.Listen("tcp", c.BindAddr)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("agent: cluster listen on %s: %w", c.BindAddr, err)
	}
	advertise, err := net.ResolveTCPAddr("tcp", c.AdvertiseAddr)
	if err != nil {
		apiLn.Close()
		clusterLn.Close()
		return fmt.Errorf("agent: advertise address %q: %w", c.AdvertiseAddr, err)
	}
	mux, err := mtls.NewMux(clusterLn, auth, advertise, a.log.Named("mux"))
	if err != nil {
		apiLn.Close()
		clusterLn.Close()
		return err
	}
	a.httpAddr.Store(apiLn.Addr().String())
	a.rpcClient = &http.Client{Transport: mux.RPCTransport(), Timeout: 15 * time.Second}
	node, err := cluster.Open(cluster.Config{DataDir: a.cfg.DataDir, Layer: mux.RaftLayer(), Bootstrap: !c.Multi(),
		Timing: cluster.ScaledTiming(c.RaftMultiplier), Logger: a.log.Named("raft")})
	if err != nil {
		apiLn.Close()
		mux.Close()
		return err
	}
	a.node = node
	// Providers that several agents may share (the local provider's
	// directory) learn which agents use them.
	for _, name := range slices.Sorted(maps.Keys(a.providers)) {
		if r, ok := a.providers[name].(interface {
			Register(nodeID, name string) error
		}); ok {
			if err := r.Register(node.ID(), a.cfg.NodeName); err != nil {
				a.log.Warn("could not register this agent with a provider", zap.String("provider", name), zap.Error(err))
			}
		}
	}
	a.log.Info("agent started", zap.String("node", a.cfg.NodeName), zap.String("node_id", node.ID()),
		zap.String("http_addr", apiLn.Addr().String()), zap.String("cluster_addr", node.LocalAddr()), zap.String("cluster_auth", a.clusterAuthMode()),
		zap.String("api_token_file", a.cfg.API.TokenFile), zap.String("fleets_dir", a.cfg.FleetsDir), zap.String("version", Version))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serve := func(name string, srv *http.Server, ln net.Listener, tlsFiles ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if len(tlsFiles) == 2 {
				err = srv.ServeTLS(ln, tlsFiles[0], tlsFiles[1])
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	// The mux outlives everything else: raft needs it until it is shut
	// down, so it has its own wait group.
	muxDone := make(chan struct{})
	go func() {
		defer close(muxDone)
		if err := mux.Serve(); err != nil && !errors.Is(err, net.ErrClosed) {
			errc <- fmt.Errorf("cluster mux: %w", err)
		}
	}()

	a.api = api.New(a, a.m.reg, a.log.Named("api"))
	apiSrv := newServer(httpRoutes(a.api.Handler(), web.Handler(a)), a.log.Named("api"))
	if a.cfg.API.TLSCertFile != "" {
		serve("http", apiSrv, apiLn, a.cfg.API.TLSCertFile, a.cfg.API.TLSKeyFile)
	} else {
		serve("http", apiSrv, apiLn)
	}
	rpcSrv := newServer(a.rpcHandler(), a.log.Named("rpc"))
	serve("rpc", rpcSrv, mux.RPCListener())
	close(a.started)

	watcher := config.NewWatcher(a.cfg.FleetsDir, config.WatchOptions{Logger: a.log.Named("watch")})
	run("watch", watcher.Run)
	run("config", func(ctx context.Context) error { return a.consumeConfig(ctx, watcher.Updates()) })
	run("probe", a.prober.Run)
	run("leadership", a.leadership)
	run("follow-state", a.followState)
	run("systemd", a.notifySystemd)
	run("propose", a.proposeLoop)
	run("report-verdicts", a.reportVerdicts)
	run("quorum-watch", a.watchQuorum)
	run("consul-announce", a.announceInConsul)
	run("form-cluster", a.formCluster)
	run("faults", a.watchFaults)
	run("data-dir", a.watchDataDir)
	run("raft-metrics", func(ctx context.Context) error { return a.m.raft.follow(ctx, node.Raft()) })
	// Providers with work of their own (the local provider's log keeper)
	// run as long as the agent does, leader or not.
	for _, name := range slices.Sorted(maps.Keys(a.providers)) {
		if r, ok := a.providers[name].(interface{ Run(context.Context) error }); ok {
			run("provider "+name, r.Run)
		}
	}

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-a.stop:
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
	a.gracefulStop()
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	_ = apiSrv.Shutdown(shutdownCtx)
	_ = rpcSrv.Shutdown(shutdownCtx)
	stop()
	wg.Wait()
	if err := node.Shutdown(); err != nil {
		a.log.Warn("raft shutdown", zap.Error(err))
	}
	mux.Close()
	<-muxDone
	a.log.Info("agent stopped")
	return runErr
}

// gracefulStop hands leadership over before the agent stops, and leaves
// the cluster when leave_on_terminate is set.
func (a *Agent) gracefulStop() {
	if a.cfg.Cluster.LeaveOnTerminate && a.cfg.Cluster.Multi() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := a.leaveCluster(ctx); err != nil {
			a.log.Warn("leave on terminate failed", zap.Error(err))
		}
		return
	}
	if a.node.IsLeader() && a.node.Voters() > 1 {
		start := time.Now()
		if err := a.node.LeadershipTransfer(); err != nil {
			a.log.Warn("leadership transfer failed", zap.Error(err))
			return
		}
		a.log.Info("leadership handed over", zap.Float64("duration_seconds", time.Since(start).Seconds()))
	}
}

// watchQuorum exports no_quorum for every fleet while this agent sees no
// leader: nothing can be changed then, and operators should know.
func (a *Agent) watchQuorum(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	since := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		leader, _ := a.node.Leader()
		if leader != "" {
			if !since.IsZero() {
				since = time.Time{}
				a.m.blocked.DeletePartialMatch(map[string]string{"cause": CauseNoQuorum})
				a.log.Info("cluster has a leader again", zap.String("leader", leader))
			}
			continue
		}
		if since.IsZero() {
			since = time.Now()
			fields := []zap.Field{zap.String("reason", CauseNoQuorum)}
			if dd := a.dataDirStatus(); !dd.At.IsZero() && !dd.Writable {
				fields = append(fields, zap.String("cause", dd.Error))
			}
			a.log.Warn("no leader: the cluster has no quorum, nothing is launched or terminated", fields...)
		}
		var names []string
		a.node.Read(func(st *state.State) { names = st.FleetNames() })
		for _, name := range names {
			a.m.blocked.WithLabelValues(name, CauseNoQuorum).Set(1)
		}
	}
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
			st := &api.ConfigStatus{At: u.At, Hash: u.Hash}
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
			a.fleets, a.fleetFiles, a.fleetsHash = u.Set, u.Files, u.Hash
			if a.startHash == "" {
				a.startHash = u.Hash
			}
			a.mu.Unlock()
			a.m.reloadOK.Set(1)
			a.m.reloadTime.Set(float64(u.At.Unix()))
			a.log.Info("fleet files loaded", zap.String("dir", a.cfg.FleetsDir), zap.Int("fleets", len(u.Set.Fleets)), zap.String("hash", short(u.Hash)))
			if prev != nil && !prev.OK && prev.Error != "" {
				// The fix of a rejected file is part of its story too.
				a.recordEvent(ctx, state.Event{Action: state.ActionConfigAccepted, Reason: "config_fixed",
					Evidence: []string{fmt.Sprintf("fleet files load again: %d %s, after %d %s", len(u.Set.Fleets), plural(len(u.Set.Fleets), "fleet", "fleets"), st.Rejected, plural(st.Rejected, "rejection", "rejections"))}})
			}
			select {
			case a.proposeNow <- struct{}{}:
			default:
			}
		}
	}
}

// reloadAgentConfig applies the settings of the agent file that can change
// at runtime (SIGHUP); the others need a restart and are reported.
func (a *Agent) reloadAgentConfig() {
	// failed is set by every part of the reload that could not be applied:
	// the reload metrics say that an edit is not (wholly) in force.
	failed := false
	defer func() {
		if failed {
			a.m.agentReloadOK.Set(0)
			a.m.agentReloadFailures.Inc()
			return
		}
		a.m.agentReloadOK.Set(1)
		a.m.agentReloadTime.Set(float64(time.Now().Unix()))
	}()
	next, err := config.LoadAgent(a.cfg.File)
	if err != nil {
		failed = true
		a.log.Error("agent config reload rejected; keeping the running configuration", zap.String("file", a.cfg.File), zap.Error(err))
		return
	}
	if err := a.level.UnmarshalText([]byte(next.LogLevel)); err != nil {
		failed = true
		a.log.Error("agent config reload: log level", zap.Error(err))
	}
	a.mu.Lock()
	a.autoDrain = next.AutoDrainRemovedFleets
	a.interval = next.ReconcileInterval
	a.limits = next.Limits
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
	if fmt.Sprint(next.Cluster) != fmt.Sprint(a.cfg.Cluster) {
		restart = append(restart, "cluster")
	}
	if next.API != a.cfg.API {
		restart = append(restart, "api")
	}
	if err := a.loadToken(); err != nil {
		failed = true
		a.log.Error("agent config reload: api token", zap.Error(err))
	}
	if a.identity != nil {
		if err := a.identity.Reload(); err != nil {
			failed = true
			a.log.Error("agent config reload: cluster certificates; keeping the loaded ones", zap.Error(err))
		}
	}
	if next.Local != a.cfg.Local || next.Docker != a.cfg.Docker {
		restart = append(restart, "provider")
	}
	a.log.Info("agent config reloaded", zap.String("log_level", next.LogLevel), zap.Bool("auto_drain_removed_fleets", next.AutoDrainRemovedFleets),
		zap.Duration("reconcile_interval", next.ReconcileInterval), zap.Int("max_instances", next.Limits.MaxInstances),
		zap.Int("max_launches_in_flight", next.Limits.MaxLaunchesInFlight), zap.Strings("changed_need_restart", restart))
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

// followState follows the replicated state on every agent: the prober's
// targets are the recorded instances, and the desired-state metrics are
// the committed ones.
func (a *Agent) followState(ctx context.Context) error {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	// The probe targets follow the instances and, with probe_agents, the
	// voters: they are built again when the state changed or the voters
	// did, not at every tick, and while the state keeps changing (a
	// scale-up of thousands) at most every ten times what the last build
	// took, so that rebuilding takes at most a tenth of a core (100,000
	// targets cost tens of milliseconds).
	changed, voters := true, ""
	var next time.Time
	for {
		changes := a.node.Changes()
		if now := strings.Join(slices.Sorted(maps.Keys(a.node.VoterIDs())), ","); (changed || now != voters) && !time.Now().Before(next) {
			start := time.Now()
			a.setProbeTargets()
			next = time.Now().Add(10 * time.Since(start))
			changed, voters = false, now
		}
		a.publishDesired()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changes:
			changed = true
		case <-t.C:
			// A change that came with the tick is not lost.
			select {
			case <-changes:
				changed = true
			default:
			}
		}
	}
}

func (a *Agent) setProbeTargets() {
	now := time.Now()
	var targets []probe.Target
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[string]bool{}
	sub, self := newSubset(a.probeAgents, a.node.VoterIDs()), a.node.ID()
	a.node.Read(func(st *state.State) {
		for _, in := range st.Instances {
			f := st.Fleets[in.Fleet]
			if f == nil || in.Address == "" || !sub.probes(self, in.ID) {
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
		a.log.Warn("could not record event", zap.String("action", string(e.Action)), zap.Error(err))
	}
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// faultFile is the fault-injection hook for tests and game days: while
// <data_dir>/faults/probes-cut exists, every probe of this agent fails
// as if the agent were cut off from all instances. The quorum rule must
// keep such an agent from causing any termination.
func (a *Agent) faultFile() string { return filepath.Join(a.cfg.DataDir, "faults", "probes-cut") }

func (a *Agent) probeFault() error {
	if a.probesCut.Load() {
		return errors.New("fault injection: this agent's probes are cut off (" + a.faultFile() + ")")
	}
	return nil
}

func (a *Agent) watchFaults(ctx context.Context) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		_, err := os.Stat(a.faultFile())
		cut := err == nil
		if a.probesCut.Swap(cut) != cut {
			a.log.Warn("probe fault injection changed", zap.Bool("probes_cut", cut), zap.String("file", a.faultFile()))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// stdLogAtDebug routes net/http's own messages (TLS handshake errors of
// port scans and the like) to debug: a stranger must not be able to
// flood the log.
func stdLogAtDebug(log *zap.Logger) *stdlog.Logger {
	l, err := zap.NewStdLogAt(log, zapcore.DebugLevel)
	if err != nil {
		return zap.NewStdLog(zap.NewNop())
	}
	return l
}

// httpRoutes puts the status page (/ui/, read-only like the API's reads)
// next to the API on the HTTP port; a browser asking for / goes to it.
func httpRoutes(apiHandler, page http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/ui/", page)
	mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	mux.Handle("/", apiHandler)
	return mux
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
