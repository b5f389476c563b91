package config

import (
	"math"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/quantity"
)

// Every default of the agent and fleet configuration is set in this file.
// The README's configuration reference documents the same values.

// Agent defaults.
const (
	DefaultHTTPAddr          = "127.0.0.1:7979"
	DefaultLogLevel          = "info"
	DefaultReconcileInterval = time.Second
	DefaultClusterBindAddr   = "127.0.0.1:7980"
	// DefaultLocalSubdir is the local provider's directory under data_dir.
	DefaultLocalSubdir       = "local"
	DefaultLocalBindHost     = "127.0.0.1"
	DefaultLocalLogSubdir    = "logs"
	DefaultLocalLogMaxSize   = 16 << 20
	minLocalLogMaxSize       = 64 << 10
	DefaultDockerHost        = "unix:///var/run/docker.sock"
	DefaultDockerPublishHost = "127.0.0.1"
	DefaultBootstrapExpect   = 1
	DefaultRaftMultiplier    = 1.0
	DefaultHealthQuorum      = "majority"
	DefaultTLSServerName     = "server.immutd"
	// DefaultAPITokenFile is the API token's file under data_dir.
	DefaultAPITokenFile        = "api-token"
	DefaultMaxInstances        = 10000
	DefaultMaxLaunchesInFlight = 16
)

// Kill-rate defaults: the cluster-wide cap, and each fleet's caps.
var (
	DefaultRemediationRate = quantity.Rate{N: 30, Per: 10 * time.Minute}
	DefaultFleetRate       = quantity.Rate{N: 10, Per: 10 * time.Minute}
	DefaultSecondaryRate   = quantity.Rate{N: 1, Per: 10 * time.Minute}
	DefaultUnhealthyShare  = quantity.Percent(25)
)

// Fleet defaults.
const (
	DefaultStopGrace          = 10 * time.Second
	DefaultDockerPort         = 8080
	DefaultDockerNetworkMode  = "bridge"
	DefaultCheckPath          = "/"
	DefaultExpectStatus       = 200
	DefaultCheckInterval      = 2 * time.Second
	DefaultCheckTimeout       = time.Second
	DefaultHealthyThreshold   = 1
	DefaultUnhealthyThreshold = 3
	DefaultStartupTimeout     = 60 * time.Second
	DefaultDriftInterval      = 10 * time.Second
	DefaultOrphans            = OrphanAdopt
	DefaultRemediation        = true
	DefaultMaxUnhealthyPct    = 50
	DefaultMaxParallel        = 1
	DefaultStormCooldown      = time.Minute
	DefaultFlapThreshold      = 3
	DefaultMaxLaunchFailures  = 10
	DefaultProgressDeadline   = 10 * time.Minute
	DefaultOnFailure          = "pause"
	DefaultFlapWindow         = 10 * time.Minute
	// MaxFlapThreshold is the most failures an agent remembers per
	// instance.
	MaxFlapThreshold      = 16
	DefaultMaxSurge       = 1
	DefaultMaxUnavailable = 0
)

// Health check defaults and limits by kind (the common settings are
// above and below).
const (
	// DefaultGRPCService asks a grpc check's server about itself as a
	// whole.
	DefaultGRPCService = ""
	// minExecTimeout is the shortest timeout of an exec check: starting a
	// process takes milliseconds, more on a loaded host.
	minExecTimeout = 100 * time.Millisecond
	// maxExecArgs bounds an exec check's command (program and arguments).
	maxExecArgs = 64
	// maxExecCommandSize bounds the bytes of an exec check's command.
	maxExecCommandSize = 4 << 10
	// maxGRPCServiceLen bounds a grpc check's service name.
	maxGRPCServiceLen = 256
)

// Watcher defaults.
const (
	DefaultWatchDebounce = 50 * time.Millisecond
	DefaultWatchRescan   = 30 * time.Second
	// Re-adding a lost directory watch backs off from watchRetryMin to watchRetryMax.
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = 5 * time.Second
	// A stream of events delays a reload by at most this many debounce periods.
	watchMaxDebounces = 20
)

// Limits the validation enforces.
const (
	maxReconcileInterval = time.Minute
	maxClusterSize       = 9
	maxInstancesLimit    = 1000000
	maxFleetSize         = 10000
	maxStopGrace         = 10 * time.Minute
	minMemoryBytes       = 4 << 20
	minCheckInterval     = 100 * time.Millisecond
	minDriftInterval     = time.Second
	maxThreshold         = math.MaxInt32
	// positive is the smallest duration above zero.
	positive = time.Nanosecond
)

// agentEnv is what the agent defaults read from the environment.
type agentEnv struct {
	hostname   func() (string, error)
	dockerHost string // $DOCKER_HOST
}

// agentExplicit records which attributes with derived defaults the file set.
type agentExplicit struct {
	nodeName, advertiseAddr, localDir, dockerHost, tlsVerify, apiToken bool
}

// defaultAgent is the agent configuration before the file is applied.
func defaultAgent() Agent {
	return Agent{
		HTTPAddr:          DefaultHTTPAddr,
		LogLevel:          DefaultLogLevel,
		ReconcileInterval: DefaultReconcileInterval,
		Cluster: ClusterConfig{BindAddr: DefaultClusterBindAddr, BootstrapExpect: DefaultBootstrapExpect,
			RaftMultiplier: DefaultRaftMultiplier, HealthQuorum: DefaultHealthQuorum, TLS: ClusterTLS{ServerName: DefaultTLSServerName}},
		Limits: Limits{MaxInstances: DefaultMaxInstances, MaxLaunchesInFlight: DefaultMaxLaunchesInFlight, RemediationRate: DefaultRemediationRate},
		Local:  LocalProvider{BindHost: DefaultLocalBindHost, LogMaxSize: DefaultLocalLogMaxSize},
		Docker: DockerProvider{Host: DefaultDockerHost, PublishHost: DefaultDockerPublishHost},
		QEMU:   QEMUProvider{Accel: "auto", BindHost: DefaultLocalBindHost},
	}
}

// deriveAgentDefaults fills the defaults that depend on other settings or
// on the environment. DataDir must already be absolute.
func deriveAgentDefaults(a *Agent, set agentExplicit, env agentEnv) error {
	if !set.advertiseAddr {
		a.Cluster.AdvertiseAddr = a.Cluster.BindAddr
	}
	a.Local.DirSet = set.localDir
	if !set.localDir && a.DataDir != "" {
		a.Local.Dir = filepath.Join(a.DataDir, DefaultLocalSubdir)
	}
	if a.Local.LogDir == "" && a.Local.Dir != "" {
		a.Local.LogDir = filepath.Join(a.Local.Dir, DefaultLocalLogSubdir)
	}
	if a.QEMU.Enabled && a.QEMU.Dir == "" && a.DataDir != "" {
		a.QEMU.Dir = filepath.Join(a.DataDir, DefaultQEMUSubdir)
	}
	a.API.TokenFileSet = set.apiToken
	if !set.apiToken && a.DataDir != "" {
		a.API.TokenFile = filepath.Join(a.DataDir, DefaultAPITokenFile)
	}
	if !set.dockerHost && env.dockerHost != "" {
		a.Docker.Host = env.dockerHost
	}
	if !set.tlsVerify {
		a.Docker.TLSVerify = a.Docker.CertPath != ""
	}
	if !set.nodeName {
		name, err := env.hostname()
		if err != nil {
			return err
		}
		a.NodeName = name
	}
	return nil
}

func defaultLaunch() Launch {
	return Launch{StopGrace: DefaultStopGrace}
}

func defaultDockerLaunch() DockerLaunch {
	return DockerLaunch{Port: DefaultDockerPort, NetworkMode: DefaultDockerNetworkMode}
}

// QEMU defaults and bounds (they match internal/provider/qemu's).
const (
	DefaultQEMUSubdir = "qemu"
	DefaultQEMUMemory = 128 << 20
	minQEMUMemory     = 32 << 20
	maxQEMUMemory     = 64 << 30
	maxQEMUCPUs       = 64
	maxQEMUBootSlots  = 64
	minQEMULogMaxSize = 64 << 10
)

func defaultQEMULaunch() QEMULaunch {
	return QEMULaunch{MemoryBytes: DefaultQEMUMemory, CPUs: 1}
}

func defaultCheck(kind string) Check {
	c := Check{
		Kind:               kind,
		Interval:           DefaultCheckInterval,
		Timeout:            DefaultCheckTimeout,
		HealthyThreshold:   DefaultHealthyThreshold,
		UnhealthyThreshold: DefaultUnhealthyThreshold,
		StartupTimeout:     DefaultStartupTimeout,
	}
	switch kind {
	case checkHTTP:
		c.Path = DefaultCheckPath
		c.ExpectStatus = []int{DefaultExpectStatus}
	case checkGRPC:
		c.Service = DefaultGRPCService
	}
	return c
}

func defaultDrift() Drift {
	return Drift{Interval: DefaultDriftInterval, Orphans: DefaultOrphans}
}

func defaultRemediation() Remediation {
	return Remediation{
		Enabled:      DefaultRemediation,
		MaxUnhealthy: quantity.Percent(DefaultMaxUnhealthyPct),
		MaxParallel:  DefaultMaxParallel,
		Mode:         RemediationAct,
		Rate:         DefaultFleetRate, SecondaryRate: DefaultSecondaryRate,
		UnhealthyThreshold: &DefaultUnhealthyShare, StormCooldown: DefaultStormCooldown, StormGuard: true,
		FlapThreshold: DefaultFlapThreshold, FlapWindow: DefaultFlapWindow, MaxLaunchFailures: DefaultMaxLaunchFailures,
	}
}

func defaultRollout() Rollout {
	return Rollout{MaxSurge: quantity.Count(DefaultMaxSurge), MaxUnavailable: quantity.Count(DefaultMaxUnavailable),
		ProgressDeadline: DefaultProgressDeadline, OnFailure: DefaultOnFailure, Strategy: StrategyRolling, Canary: quantity.Count(1)}
}

func (o WatchOptions) withDefaults() WatchOptions {
	if o.Debounce <= 0 {
		o.Debounce = DefaultWatchDebounce
	}
	if o.Rescan <= 0 {
		o.Rescan = DefaultWatchRescan
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}
