package config

import (
	"fmt"
	"sort"
	"time"

	"github.com/immutd/immutd/internal/quantity"
)

// Pos is a place in a configuration file.
type Pos struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column) }

// Agent is the agent configuration: one HCL file.
type Agent struct {
	// File is the path the configuration was read from (absolute).
	File string `json:"file"`
	// NodeName names this agent in logs, status and events. Default: the hostname.
	NodeName string `json:"node_name"`
	// DataDir holds raft state, snapshots and provider state. Required.
	DataDir string `json:"data_dir"`
	// HTTPAddr is the address of the HTTP API and /metrics. Default 127.0.0.1:7979.
	HTTPAddr string `json:"http_addr"`
	// FleetsDir is the watched directory of *.hcl fleet files. Required.
	FleetsDir string `json:"fleets_dir"`
	// LogLevel is one of debug, info, warn, error. Default info.
	LogLevel string `json:"log_level"`
	// AutoDrainRemovedFleets drains a fleet whose definition disappeared
	// from the fleet files without waiting for `immutd fleet drain`. Default false.
	AutoDrainRemovedFleets bool `json:"auto_drain_removed_fleets"`
	// ReconcileInterval is the period of the level-based reconcile pass. Default 1s.
	ReconcileInterval time.Duration `json:"reconcile_interval"`

	Cluster ClusterConfig  `json:"cluster"`
	API     APIConfig      `json:"api"`
	Limits  Limits         `json:"limits"`
	Local   LocalProvider  `json:"local"`
	Docker  DockerProvider `json:"docker"`
	QEMU    QEMUProvider   `json:"qemu"`
	Sim     SimProvider    `json:"sim"`

	// Warnings are settings that work but that an operator should know
	// about (for example an API token sent in cleartext). They are not
	// errors: the file loads.
	Warnings Diagnostics `json:"-"`
}

// Limits are the cluster-wide guards of the limits { ... } block. The
// leader's values are in force; set the same on every agent.
type Limits struct {
	// MaxInstances caps the instances of all fleets together (running,
	// launching and terminating). Default 10000.
	MaxInstances int `json:"max_instances"`
	// MaxLaunchesInFlight caps launches journaled but not finished, over
	// all fleets. Default 16.
	MaxLaunchesInFlight int `json:"max_launches_in_flight"`
	// RemediationRate caps remediation kills of all fleets together.
	// Default 30/10m.
	RemediationRate quantity.Rate `json:"remediation_rate"`
}

// ClusterConfig configures raft and agent-to-agent traffic.
type ClusterConfig struct {
	// BindAddr is the cluster listen address (raft and agent-to-agent RPC
	// share it). Default 127.0.0.1:7980.
	BindAddr string `json:"bind_addr"`
	// AdvertiseAddr is the address peers dial. Default: BindAddr.
	AdvertiseAddr string `json:"advertise_addr"`
	// BootstrapExpect is the number of agents that form a new cluster
	// together. Default 1: a single agent bootstraps itself.
	BootstrapExpect int `json:"bootstrap_expect"`
	// Join lists peers' cluster addresses to find the cluster through.
	Join []string `json:"join,omitempty"`
	// JoinConsul finds peers through a Consul catalog as well: every agent
	// registers its cluster address there, and an agent without raft state
	// looks the others up while there is no leader. Nil when not set.
	JoinConsul *ConsulJoin `json:"join_consul,omitempty"`
	// RaftMultiplier scales raft's timing (heartbeat and election timeout
	// 200ms, leader lease 100ms, commit timeout 25ms at 1). Default 1.
	RaftMultiplier float64 `json:"raft_multiplier"`
	// HealthQuorum is how many agents must agree on a verdict: "majority"
	// (default), "all", or a count.
	HealthQuorum string `json:"health_quorum"`
	// ProbeAgents is how many agents probe each instance: 0 (default)
	// every agent probes every instance; k (1 to 9) each instance is
	// probed by k of the voters, chosen by rendezvous hashing, and its
	// verdict needs health_quorum of those k.
	ProbeAgents int `json:"probe_agents,omitempty"`
	// LeaveOnTerminate removes this agent from the cluster on SIGTERM
	// (after handing leadership over). Default false: a restart keeps
	// membership.
	LeaveOnTerminate bool `json:"leave_on_terminate"`
	// TLS secures raft and agent-to-agent RPC with mutual TLS. Without it
	// a single agent makes a TLS identity of its own at every start, which
	// no peer shares, so its cluster port accepts nobody. A cluster of more
	// than one agent needs TLS (or the insecure plaintext mode).
	TLS ClusterTLS `json:"tls"`
	// Insecure is the insecure plaintext mode, loopback only.
	Insecure ClusterInsecure `json:"insecure_plaintext"`
}

// ClusterInsecure is the cluster { insecure_plaintext { ... } } block:
// raft and RPC without encryption, authenticated by a shared token, for
// agents that all run on one host and talk over loopback.
type ClusterInsecure struct {
	// TokenFile holds the shared cluster token (16+ characters).
	TokenFile string `json:"token_file,omitempty"`
}

// Enabled reports whether the insecure plaintext mode is configured.
func (c ClusterInsecure) Enabled() bool { return c.TokenFile != "" }

// Multi reports whether this agent is configured for a multi-agent cluster.
func (c ClusterConfig) Multi() bool {
	return c.BootstrapExpect > 1 || len(c.Join) > 0 || c.JoinConsul != nil
}

// ConsulJoin is the cluster { join_consul { ... } } block.
type ConsulJoin struct {
	// Address of the Consul agent's HTTP API. Default 127.0.0.1:8500.
	Address string `json:"address"`
	// Service is the service name the agents register as. Default "immutd".
	Service       string `json:"service"`
	TokenFile     string `json:"token_file,omitempty"`
	CAFile        string `json:"ca_file,omitempty"`
	CertFile      string `json:"cert_file,omitempty"`
	KeyFile       string `json:"key_file,omitempty"`
	TLSServerName string `json:"tls_server_name,omitempty"`
}

// ClusterTLS is the cluster { tls { ... } } block.
type ClusterTLS struct {
	CAFile   string `json:"ca_file,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// ServerName is the DNS name every agent certificate must carry.
	// Default "server.immutd".
	ServerName string `json:"server_name,omitempty"`
}

// Enabled reports whether mutual TLS is configured.
func (t ClusterTLS) Enabled() bool { return t.CertFile != "" }

// APIConfig is the api { ... } block: the operator HTTP API.
type APIConfig struct {
	// TokenFile holds the bearer token required for every request that
	// changes state. Default: <data_dir>/api-token, which the agent
	// creates with a random token at its first start.
	TokenFile string `json:"token_file,omitempty"`
	// TokenFileSet is true when token_file was set in the file.
	TokenFileSet bool `json:"token_file_set,omitempty"`
	// TLSCertFile and TLSKeyFile make the API serve HTTPS.
	TLSCertFile string `json:"tls_cert_file,omitempty"`
	TLSKeyFile  string `json:"tls_key_file,omitempty"`
}

// LocalProvider configures the local provider (provider "local" { ... }).
type LocalProvider struct {
	// Dir is where the local provider keeps its image store and instance
	// directories. Default: <data_dir>/local.
	Dir string `json:"dir"`
	// BindHost is the loopback host instances listen on. Default 127.0.0.1.
	BindHost string `json:"bind_host"`
	// LogDir receives each instance's stdout and stderr. Default
	// <dir>/logs. Put it on another file system than data_dir to keep a
	// noisy instance away from raft's disk.
	LogDir string `json:"log_dir"`
	// LogMaxSize is the size at which an instance log is rotated (one
	// older file is kept). Default 16 MiB, at least 64 KiB.
	LogMaxSize int64 `json:"log_max_size"`
	// DirSet is true when dir was set in the file. A multi-agent cluster
	// uses the local provider only then: the directory must be shared.
	DirSet bool `json:"dir_set"`
}

// QEMUProvider configures the qemu provider (provider "qemu" { ... }),
// which runs instances as QEMU virtual machines. It exists only when the
// block is there (Enabled): then the agent checks at its start that the
// host can run QEMU, and refuses to start when it cannot.
type QEMUProvider struct {
	Enabled bool `json:"enabled"`
	// Dir holds the VM image store, the VMs' directories and their
	// console logs. Default: <data_dir>/qemu.
	Dir string `json:"dir"`
	// Binary is the QEMU system emulator. Default qemu-system-x86_64 from PATH.
	Binary string `json:"binary,omitempty"`
	// Accel is auto (default: KVM when the host really offers it, else
	// TCG), kvm or tcg.
	Accel string `json:"accel"`
	// BindHost is the address the VMs' forwarded ports listen on. Default 127.0.0.1.
	BindHost string `json:"bind_host"`
	// BootSlots bounds the VMs booting at once. Default: the host's CPUs.
	BootSlots int `json:"boot_slots,omitempty"`
	// SlotDir holds the boot slots; agents that share it share the
	// bound. Default <dir>/slots.
	SlotDir string `json:"slot_dir,omitempty"`
	// BootWait bounds how long a boot holds its slot. Default 2m.
	BootWait time.Duration `json:"boot_wait,omitempty"`
	// Outbound lets guests open connections out of the VM. Default false.
	Outbound bool `json:"outbound"`
	// LogDir receives the VMs' serial consoles. Default <dir>/logs.
	LogDir string `json:"log_dir,omitempty"`
	// LogMaxSize is the size at which a console log is rotated. Default 4 MiB.
	LogMaxSize int64 `json:"log_max_size,omitempty"`
	// LogKeep and LogMaxAge bound the console logs kept of VMs that are
	// gone. Defaults 500 and 168h.
	LogKeep   int           `json:"log_keep,omitempty"`
	LogMaxAge time.Duration `json:"log_max_age,omitempty"`
}

// DockerProvider configures the docker provider (provider "docker" { ... }).
type DockerProvider struct {
	// Host is the engine endpoint, as DOCKER_HOST. Default: DOCKER_HOST, else the local socket.
	Host string `json:"host"`
	// CertPath is a directory with ca.pem, cert.pem and key.pem, as DOCKER_CERT_PATH.
	CertPath string `json:"cert_path"`
	// TLSVerify verifies the engine's certificate, as DOCKER_TLS_VERIFY. Default true when CertPath is set.
	TLSVerify bool `json:"tls_verify"`
	// PublishHost is the host address container ports are published on. Default 127.0.0.1.
	PublishHost string `json:"publish_host"`
}

// FleetSet is the whole desired state read from a fleets directory.
type FleetSet struct {
	Dir    string   `json:"dir"`
	Fleets []*Fleet `json:"fleets"` // sorted by name
}

// Fleet is one `fleet "name" { ... }` block.
type Fleet struct {
	Name string `json:"name"`
	// Pos is where the fleet block starts.
	Pos Pos `json:"pos"`
	// Size is the desired number of instances (>= 0).
	Size int `json:"size"`
	// Provider is "local" or "docker".
	Provider string `json:"provider"`
	// Image is the golden image: for the local provider the absolute path
	// of a bundle directory (relative paths are resolved against the fleet
	// file's directory); for docker an image reference.
	Image string `json:"image"`

	Launch      Launch      `json:"launch"`
	Health      Health      `json:"health"`
	Drift       Drift       `json:"drift"`
	Remediation Remediation `json:"remediation"`
	Rollout     Rollout     `json:"rollout"`
	// Traffic is nil when the fleet has no traffic block.
	Traffic *Traffic `json:"traffic,omitempty"`
}

// Launch is how an instance is started from the image.
type Launch struct {
	// Command replaces the image's entrypoint when set.
	Command []string `json:"command,omitempty"`
	// Args are appended to the entrypoint (or Command).
	Args []string `json:"args,omitempty"`
	// Env is extra environment for the instance.
	Env map[string]string `json:"env,omitempty"`
	// StopGrace is how long terminate waits after SIGTERM before SIGKILL. Default 10s.
	StopGrace time.Duration `json:"stop_grace"`
	// Docker holds docker-only launch settings.
	Docker *DockerLaunch `json:"docker,omitempty"`
	// QEMU holds qemu-only launch settings.
	QEMU *QEMULaunch `json:"qemu,omitempty"`
}

// QEMULaunch holds the qemu provider's launch settings (launch { qemu { ... } }).
type QEMULaunch struct {
	// MemoryBytes is the VM's memory (from `memory = "128MiB"`). Default 128 MiB.
	MemoryBytes int64 `json:"memory_bytes"`
	// CPUs is the VM's number of virtual CPUs. Default 1.
	CPUs int `json:"cpus"`
}

// DockerLaunch holds the docker provider's launch settings (launch { docker { ... } }).
type DockerLaunch struct {
	// Port is the container port the app listens on; it is published on a
	// free host port of the provider's publish_host. Default 8080.
	Port int `json:"port"`
	// NetworkMode is "bridge" (default) or "host". With "host", PORT is a free host port.
	NetworkMode string `json:"network_mode"`
	// ReadOnly mounts the container's root filesystem read-only.
	ReadOnly bool `json:"read_only"`
	// MemoryBytes limits memory (from `memory = "256MiB"`). 0 = no limit.
	MemoryBytes int64 `json:"memory_bytes"`
	// NanoCPUs limits CPU (from `cpus = 0.5`). 0 = no limit.
	NanoCPUs int64 `json:"nano_cpus"`
}

// Health is the set of checks that judge an instance.
type Health struct {
	Checks []Check `json:"checks"`
}

// Check is one `http "name" { ... }`, `tcp "name" { ... }`,
// `grpc "name" { ... }` or `exec "name" { ... }` block.
type Check struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // "http", "tcp", "grpc" or "exec"
	// Path is the HTTP request path. Default "/". http only.
	Path string `json:"path,omitempty"`
	// ExpectStatus lists accepted HTTP status codes. Default [200]. http only.
	ExpectStatus []int `json:"expect_status,omitempty"`
	// Service is the service name sent in grpc.health.v1.Health/Check.
	// Default "": the whole server. grpc only.
	Service string `json:"service,omitempty"`
	// Command is the program (an absolute path) and its arguments, run on
	// the agent's host. Required. exec only.
	Command []string `json:"command,omitempty"`
	// Consul is the Consul agent whose checks of the instance's
	// registration a consul check reads. consul only.
	Consul *ConsulCheck `json:"consul,omitempty"`
	// Interval between probes. Default 2s.
	Interval time.Duration `json:"interval"`
	// Timeout of one probe. Default 1s; must be <= Interval.
	Timeout time.Duration `json:"timeout"`
	// HealthyThreshold consecutive successes make an instance healthy. Default 1.
	HealthyThreshold int `json:"healthy_threshold"`
	// UnhealthyThreshold consecutive failures make a healthy instance unhealthy. Default 3.
	UnhealthyThreshold int `json:"unhealthy_threshold"`
	// StartupTimeout is how long a new instance has to pass this check the
	// first time; after it the instance is never-healthy. Default 60s.
	StartupTimeout time.Duration `json:"startup_timeout"`
}

// ConsulCheck is where a consul check reads: the Consul agent's address
// and how to reach it.
type ConsulCheck struct {
	Address       string `json:"address"`
	TokenFile     string `json:"token_file,omitempty"`
	CAFile        string `json:"ca_file,omitempty"`
	CertFile      string `json:"cert_file,omitempty"`
	KeyFile       string `json:"key_file,omitempty"`
	TLSServerName string `json:"tls_server_name,omitempty"`
}

// Orphan policies.
const (
	OrphanAdopt     = "adopt"
	OrphanTerminate = "terminate"
	OrphanIgnore    = "ignore"
)

// Drift configures in-place drift detection.
type Drift struct {
	// Interval between drift inspections of one instance. Default 10s.
	Interval time.Duration `json:"interval"`
	// IgnorePaths are slash-separated glob patterns (relative to the
	// instance root) whose changes are not drift.
	IgnorePaths []string `json:"ignore_paths,omitempty"`
	// Orphans says what to do with an instance that carries the fleet's
	// identity but that no record explains: "adopt" (default: record it and
	// judge it like any other), "terminate", or "ignore" (report only).
	Orphans string `json:"orphans"`
}

// Remediation bounds health- and drift-driven replacement.
type Remediation struct {
	// Enabled turns replacement of unhealthy, exited and drifted
	// instances on. Default true. When false, immutd only reports.
	Enabled bool `json:"enabled"`
	// MaxUnhealthy: when more instances than this are unhealthy at once,
	// remediation stops (circuit breaker). Count or percent of size;
	// percent rounds down but is at least 1. Default "50%".
	MaxUnhealthy Quantity `json:"max_unhealthy"`
	// MaxParallel bounds terminations in flight for the fleet. Default 1.
	MaxParallel int `json:"max_parallel"`
	// Mode is "act" (default) or "report"; report is enabled = false.
	Mode string `json:"mode"`
	// Report lists reasons that are only reported while the others are
	// acted on: unhealthy, never_healthy, drift_mutated, orphan.
	Report []string `json:"report,omitempty"`
	// Rate caps the fleet's remediation kills: at most N in any window
	// ("5/10m"). Default 10/10m.
	Rate quantity.Rate `json:"rate"`
	// SecondaryRate is the cap while more than UnhealthyThreshold of the
	// running instances fail. Default 1/10m.
	SecondaryRate quantity.Rate `json:"secondary_rate"`
	// UnhealthyThreshold: the share of failing running instances above
	// which SecondaryRate applies (with at least 3 running). Default 25%.
	UnhealthyThreshold *Quantity `json:"unhealthy_threshold"`
	// StormCooldown is how long kills for health stay stopped after a
	// storm ends. Default 1m.
	StormCooldown time.Duration `json:"storm_cooldown"`
	// StormGuard stops kills for health while every running instance
	// (3 or more) fails at once. Default true.
	StormGuard bool `json:"storm_guard"`
	// HealthyDelay: an instance that recovers counts as healthy only once
	// it stayed healthy this long. Default 0s.
	HealthyDelay time.Duration `json:"healthy_delay"`
	// FlapThreshold failures (turns from healthy to unhealthy) within
	// FlapWindow mark an instance flapping: it is replaced even while it
	// passes. 0 turns flap detection off. Default 3 in 10m.
	FlapThreshold int           `json:"flap_threshold"`
	FlapWindow    time.Duration `json:"flap_window"`
	// MaxLaunchFailures caps the launch backoff: after this many
	// consecutive instances failed before ever becoming healthy, the
	// fleet launches nothing more until its file changes or `immutd fleet
	// retry`. 0: no cap. Default 10.
	MaxLaunchFailures int `json:"max_launch_failures"`
	// Quarantine, when set, keeps instances that would be killed for one
	// of its reasons running for forensics instead (out of traffic, a
	// replacement launched as usual), up to Max at once, each for TTL.
	Quarantine *Quarantine `json:"quarantine,omitempty"`
}

// Quarantine is the remediation { quarantine { ... } } block.
type Quarantine struct {
	// Max quarantined instances of the fleet at once. Default 1, at most 16.
	Max int `json:"max"`
	// TTL is how long an instance stays quarantined before it is
	// terminated. Default 24h.
	TTL time.Duration `json:"ttl"`
	// Reasons are the remediation reasons that quarantine. Default all:
	// unhealthy, never_healthy, drift_mutated, orphan.
	Reasons []string `json:"reasons"`
}

// Rollout bounds replacement when the desired image or template changes.
type Rollout struct {
	// MaxSurge is how many instances above size may exist. Default 1; percent rounds up.
	MaxSurge Quantity `json:"max_surge"`
	// MaxUnavailable is how many healthy instances below size are allowed. Default 0; percent rounds down.
	MaxUnavailable Quantity `json:"max_unavailable"`
	// ProgressDeadline: the rollout fails when no instance of the new
	// version became available for this long. Default 10m.
	ProgressDeadline time.Duration `json:"progress_deadline"`
	// Bake: a completed rollout's version is stable (a revert target)
	// once it stayed healthy this long. Default 0s.
	Bake time.Duration `json:"bake"`
	// OnFailure is "pause" (default: no more outdated instances are
	// replaced) or "revert" (back to the last stable version);
	// auto_revert = true is on_failure = "revert".
	OnFailure string `json:"on_failure"`
	// Strategy is "rolling" (default: surge-first replacement) or
	// "canary": Canary instances of the new version run next to the old
	// ones, which keep serving, until the rollout is promoted — by itself
	// once every canary has been available for PromoteAfter, or by
	// `immutd rollout promote` when PromoteAfter is 0.
	Strategy     string        `json:"strategy"`
	Canary       Quantity      `json:"canary"`
	PromoteAfter time.Duration `json:"promote_after"`
	// Analysis, when set, gates the rollout on Prometheus queries.
	Analysis *Analysis `json:"analysis,omitempty"`
	// Checkpoints are percentages of the fleet on the new version at
	// which the rollout pauses, for CheckpointPause or (0, the default)
	// until `immutd rollout resume`.
	Checkpoints     []Quantity    `json:"checkpoints,omitempty"`
	CheckpointPause time.Duration `json:"checkpoint_pause"`
}

// Quantity is a count ("3", 3) or a percentage of the fleet size ("25%").
type Quantity = quantity.Q

// Names returns the fleet names in order.
func (s *FleetSet) Names() []string {
	out := make([]string, 0, len(s.Fleets))
	for _, f := range s.Fleets {
		out = append(out, f.Name)
	}
	sort.Strings(out)
	return out
}

// Fleet returns the named fleet, or nil.
func (s *FleetSet) Fleet(name string) *Fleet {
	for _, f := range s.Fleets {
		if f.Name == name {
			return f
		}
	}
	return nil
}
