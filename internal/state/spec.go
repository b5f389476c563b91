package state

import (
	"maps"
	"slices"
	"time"

	"github.com/immutd/immutd/internal/analysis"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/quantity"
)

// FleetSpec is a fleet's settings as committed in the desired state. It
// is immutd's own replicated type, not the config package's: config
// structs may change with every release, this encoding may not. The JSON
// names are those release dbf9177 wrote (from config.Fleet), so its
// snapshots and log entries decode unchanged; the rules on
// instance.Launch apply to every type here: new fields are omitted when
// zero and their zero value means the old behaviour.
// testdata/release-dbf9177 pins the encoding.
type FleetSpec struct {
	Name string `json:"name"`
	// Size is the desired number of instances.
	Size     int    `json:"size"`
	Provider string `json:"provider"`
	// Image is the image reference as written in the fleet file (a local
	// bundle's absolute path, or a docker reference); instances are judged
	// against the pinned DesiredFleet.ImageDigest, never against it.
	Image       string          `json:"image"`
	Launch      instance.Launch `json:"launch"`
	Health      HealthSpec      `json:"health"`
	Drift       DriftSpec       `json:"drift"`
	Remediation RemediationSpec `json:"remediation"`
	Rollout     RolloutSpec     `json:"rollout"`
	// Traffic is nil for a fleet without a traffic gate (and in every
	// entry written before traffic existed).
	Traffic *TrafficSpec `json:"traffic,omitempty"`
}

// TrafficSpec is a fleet's traffic gate: when its instances are admitted
// to and drained from which backends.
type TrafficSpec struct {
	MinReady       time.Duration    `json:"min_ready"`
	DrainDelay     time.Duration    `json:"drain_delay"`
	KeepMin        int              `json:"keep_min"`
	BackendTimeout time.Duration    `json:"backend_timeout"`
	Files          []TrafficFile    `json:"files,omitempty"`
	HAProxy        []TrafficHAProxy `json:"haproxy,omitempty"`
	Consul         []TrafficConsul  `json:"consul,omitempty"`
}

// Gated says whether instances of a fleet with this spec go through the
// traffic gate: it has at least one backend.
func (t *TrafficSpec) Gated() bool {
	return t != nil && len(t.Files)+len(t.HAProxy)+len(t.Consul) > 0
}

// TrafficFile is a file_sd target file backend.
type TrafficFile struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// TrafficHAProxy is an HAProxy Runtime API backend.
type TrafficHAProxy struct {
	Name    string `json:"name"`
	Socket  string `json:"socket"`
	Backend string `json:"backend"`
	Check   bool   `json:"check,omitempty"`
}

// TrafficConsul is a Consul service registration backend.
type TrafficConsul struct {
	Name          string            `json:"name"`
	Address       string            `json:"address"`
	Service       string            `json:"service"`
	Tags          []string          `json:"tags,omitempty"`
	Meta          map[string]string `json:"meta,omitempty"`
	TokenFile     string            `json:"token_file,omitempty"`
	CAFile        string            `json:"ca_file,omitempty"`
	CertFile      string            `json:"cert_file,omitempty"`
	KeyFile       string            `json:"key_file,omitempty"`
	TLSServerName string            `json:"tls_server_name,omitempty"`
}

// HealthSpec is the set of checks that judge an instance.
type HealthSpec struct {
	Checks []Check `json:"checks"`
}

// Check is one health check.
type Check struct {
	Name string `json:"name"`
	// Kind is "http", "tcp", "grpc" or "exec".
	Kind string `json:"kind"`
	// Path and ExpectStatus are for http checks only.
	Path         string `json:"path,omitempty"`
	ExpectStatus []int  `json:"expect_status,omitempty"`
	// Service is the service a grpc check asks about; "" is the whole
	// server. grpc checks only.
	Service string `json:"service,omitempty"`
	// Command is the program and arguments of an exec check. exec checks
	// only.
	Command []string `json:"command,omitempty"`
	// Consul is the Consul agent a consul check asks. consul checks only.
	Consul             *ConsulCheck  `json:"consul,omitempty"`
	Interval           time.Duration `json:"interval"`
	Timeout            time.Duration `json:"timeout"`
	HealthyThreshold   int           `json:"healthy_threshold"`
	UnhealthyThreshold int           `json:"unhealthy_threshold"`
	StartupTimeout     time.Duration `json:"startup_timeout"`
}

// ConsulCheck is where a consul check reads the instance's checks.
type ConsulCheck struct {
	Address       string `json:"address"`
	TokenFile     string `json:"token_file,omitempty"`
	CAFile        string `json:"ca_file,omitempty"`
	CertFile      string `json:"cert_file,omitempty"`
	KeyFile       string `json:"key_file,omitempty"`
	TLSServerName string `json:"tls_server_name,omitempty"`
}

// DriftSpec configures in-place drift detection.
type DriftSpec struct {
	Interval    time.Duration `json:"interval"`
	IgnorePaths []string      `json:"ignore_paths,omitempty"`
	// Orphans is "adopt", "terminate" or "ignore".
	Orphans string `json:"orphans"`
}

// RemediationSpec bounds health- and drift-driven replacement.
//
// The guards' settings (Rate to StormCooldown) are kept only where the
// fleet file sets them to something else than this release's default:
// zero (nil) means "the default of the release that plans", which
// Effective fills in. So a release that adds or changes a default
// commits no new desired state for unchanged files (the guards change no
// instance, only how fast remediation may act), and a spec that sets none
// of them is encoded as the releases before them wrote it.
type RemediationSpec struct {
	Enabled      bool       `json:"enabled"`
	MaxUnhealthy quantity.Q `json:"max_unhealthy"`
	MaxParallel  int        `json:"max_parallel"`
	// Report lists the remediation reasons (RemediationReasons) that are
	// only reported, as Enabled false reports them all.
	Report []string `json:"report,omitempty"`
	// Rate caps the fleet's remediation kills (see RemediationReasons).
	// SecondaryRate replaces it while more than UnhealthyThreshold of the
	// fleet's running instances fail.
	Rate               quantity.Rate `json:"rate,omitzero"`
	SecondaryRate      quantity.Rate `json:"secondary_rate,omitzero"`
	UnhealthyThreshold *quantity.Q   `json:"unhealthy_threshold,omitempty"`
	// StormCooldown is how long kills for health stay stopped after a
	// storm (every running instance failing at once) ended.
	StormCooldown *time.Duration `json:"storm_cooldown,omitempty"`
	// NoStormGuard turns storms off for the fleet (storm_guard = false):
	// every instance failing at once is then remediated as any failure.
	NoStormGuard bool `json:"no_storm_guard,omitempty"`
	// HealthyDelay: a recovered instance counts as healthy once it stayed
	// healthy this long (zero: at once, the default).
	HealthyDelay time.Duration `json:"healthy_delay,omitempty"`
	// FlapThreshold failures within FlapWindow mark an instance flapping
	// (0 in FlapThreshold: off).
	FlapThreshold *int           `json:"flap_threshold,omitempty"`
	FlapWindow    *time.Duration `json:"flap_window,omitempty"`
	// MaxLaunchFailures caps the launch backoff (0 in it: no cap).
	MaxLaunchFailures *int `json:"max_launch_failures,omitempty"`
	// Quarantine, when set, keeps instances killed for one of its reasons
	// running for forensics instead, out of traffic (nil: none).
	Quarantine *QuarantineSpec `json:"quarantine,omitempty"`
}

// QuarantineSpec bounds a fleet's quarantine.
type QuarantineSpec struct {
	Max     int           `json:"max"`
	TTL     time.Duration `json:"ttl"`
	Reasons []string      `json:"reasons"`
}

// Quarantines says whether a kill for this reason becomes a quarantine.
func (r *RemediationSpec) Quarantines(reason string) bool {
	return r.Quarantine != nil && slices.Contains(r.Quarantine.Reasons, reason)
}

// Guarded says whether the spec sets a guard that releases before the
// guards did not know: an entry carrying it is refused by them.
func (r *RemediationSpec) Guarded() bool {
	return len(r.Report) > 0 || r.Rate.Set() || r.SecondaryRate.Set() || r.UnhealthyThreshold != nil || r.StormCooldown != nil || r.NoStormGuard ||
		r.HealthyDelay != 0 || r.FlapThreshold != nil || r.FlapWindow != nil || r.Quarantine != nil || r.MaxLaunchFailures != nil
}

// Reports says whether remediation only reports instances it would
// replace for this reason.
func (r *RemediationSpec) Reports(reason string) bool {
	return !r.Enabled || slices.Contains(r.Report, reason)
}

// Effective is the spec with the release's defaults for the guards it
// does not set.
func (r RemediationSpec) Effective() RemediationSpec {
	if !r.Rate.Set() {
		r.Rate = config.DefaultFleetRate
	}
	if !r.SecondaryRate.Set() {
		r.SecondaryRate = config.DefaultSecondaryRate
	}
	defaultTo(&r.UnhealthyThreshold, config.DefaultUnhealthyShare)
	defaultTo(&r.StormCooldown, config.DefaultStormCooldown)
	defaultTo(&r.FlapThreshold, config.DefaultFlapThreshold)
	defaultTo(&r.FlapWindow, config.DefaultFlapWindow)
	defaultTo(&r.MaxLaunchFailures, config.DefaultMaxLaunchFailures)
	return r
}

// defaultTo points an unset setting at its default.
func defaultTo[T any](p **T, v T) {
	if *p == nil {
		*p = &v
	}
}

// RolloutSpec bounds replacement when the desired image or template
// changes, and says when a rollout has failed and what then. The zero
// ProgressDeadline and OnFailure mean the defaults.
type RolloutSpec struct {
	MaxSurge       quantity.Q `json:"max_surge"`
	MaxUnavailable quantity.Q `json:"max_unavailable"`
	// ProgressDeadline: a rollout fails when no instance of its version
	// became available for this long (zero: the default, 10m).
	ProgressDeadline time.Duration `json:"progress_deadline,omitempty"`
	// Bake is how long a completed rollout must stay healthy before its
	// version is stable (a revert target).
	Bake time.Duration `json:"bake,omitempty"`
	// OnFailure is "pause" ("": the default) or "revert".
	OnFailure string `json:"on_failure,omitempty"`
	// Canary, when set, is the canary strategy: that many instances of
	// a new version run next to the old ones until the rollout is
	// promoted, by itself after PromoteAfter (zero: by an operator).
	Canary *CanarySpec `json:"canary,omitempty"`
	// Analysis, when set, gates the rollout on Prometheus queries.
	Analysis *AnalysisSpec `json:"analysis,omitempty"`
	// BlueGreen is the blue-green strategy: a whole new set, traffic
	// switched to it in one step, the old set kept drained for the bake.
	BlueGreen bool `json:"blue_green,omitempty"`
	// Checkpoints are shares of the fleet on the new version at which the
	// rollout pauses: for CheckpointPause, or (zero) until resumed.
	Checkpoints     []quantity.Q  `json:"checkpoints,omitempty"`
	CheckpointPause time.Duration `json:"checkpoint_pause,omitempty"`
}

// AnalysisSpec is a rollout's metric analysis (see config.Analysis).
type AnalysisSpec struct {
	Prometheus string           `json:"prometheus"`
	Interval   time.Duration    `json:"interval"`
	Metrics    []AnalysisMetric `json:"metrics"`
}

// AnalysisMetric is one metric of an analysis; the conditions are kept
// as written and parsed where they are used.
type AnalysisMetric struct {
	Name                  string `json:"name"`
	Query                 string `json:"query"`
	Success               string `json:"success,omitempty"`
	Failure               string `json:"failure,omitempty"`
	Count                 int    `json:"count,omitempty"`
	FailureLimit          int    `json:"failure_limit,omitempty"`
	InconclusiveLimit     int    `json:"inconclusive_limit,omitempty"`
	ConsecutiveErrorLimit int    `json:"consecutive_error_limit"`
	ConsecutiveSuccess    int    `json:"consecutive_success,omitempty"`
	DryRun                bool   `json:"dry_run,omitempty"`
}

// Judged are the analysis's metrics as the analysis package judges
// them; a condition that does not parse (no committed spec has one: the
// config rules refuse it) is left out.
func (a *AnalysisSpec) Judged() []analysis.Metric {
	out := make([]analysis.Metric, 0, len(a.Metrics))
	for _, m := range a.Metrics {
		am := analysis.Metric{Name: m.Name, Query: m.Query, Count: m.Count, FailureLimit: m.FailureLimit, InconclusiveLimit: m.InconclusiveLimit,
			ConsecutiveErrorLimit: m.ConsecutiveErrorLimit, ConsecutiveSuccessLimit: m.ConsecutiveSuccess, DryRun: m.DryRun}
		var err error
		if m.Success != "" {
			am.Success, err = analysis.ParseCondition(m.Success)
			am.HasSuccess = err == nil
		}
		if m.Failure != "" {
			am.Failure, err = analysis.ParseCondition(m.Failure)
			am.HasFailure = err == nil
		}
		out = append(out, am)
	}
	return out
}

// CanarySpec is the canary strategy.
type CanarySpec struct {
	Count        quantity.Q    `json:"count"`
	PromoteAfter time.Duration `json:"promote_after,omitempty"`
}

// Deadline is the rollout's progress deadline.
func (r *RolloutSpec) Deadline() time.Duration {
	if r.ProgressDeadline == 0 {
		return config.DefaultProgressDeadline
	}
	return r.ProgressDeadline
}

// Set says whether the spec sets a rollout policy releases before them
// did not know.
func (r *RolloutSpec) Set() bool {
	return r.ProgressDeadline != 0 || r.Bake != 0 || r.OnFailure != "" || r.Canary != nil || r.Analysis != nil || r.BlueGreen || len(r.Checkpoints) > 0
}

// Orphan policies (DriftSpec.Orphans).
const (
	OrphanAdopt     = config.OrphanAdopt
	OrphanTerminate = config.OrphanTerminate
	OrphanIgnore    = config.OrphanIgnore
)

// SpecOf is the one conversion from a decoded fleet file block to its
// replicated form. Where it was written (config.Fleet.Pos) is not part of
// the desired state: identical fleets from two agents are equal.
func SpecOf(f *config.Fleet) FleetSpec {
	s := FleetSpec{
		Name:     f.Name,
		Size:     f.Size,
		Provider: f.Provider,
		Image:    f.Image,
		Launch: instance.Launch{
			Command:   slices.Clone(f.Launch.Command),
			Args:      slices.Clone(f.Launch.Args),
			StopGrace: f.Launch.StopGrace,
		},
		Drift:       DriftSpec{Interval: f.Drift.Interval, IgnorePaths: slices.Clone(f.Drift.IgnorePaths), Orphans: f.Drift.Orphans},
		Remediation: remediationOf(&f.Remediation),
		Rollout:     rolloutOf(&f.Rollout),
	}
	if len(f.Launch.Env) > 0 {
		s.Launch.Env = make(map[string]string, len(f.Launch.Env))
		for k, v := range f.Launch.Env {
			s.Launch.Env[k] = v
		}
	}
	if d := f.Launch.Docker; d != nil {
		s.Launch.Docker = &instance.DockerLaunch{Port: d.Port, NetworkMode: d.NetworkMode, ReadOnly: d.ReadOnly, MemoryBytes: d.MemoryBytes, NanoCPUs: d.NanoCPUs}
	}
	if q := f.Launch.QEMU; q != nil {
		s.Launch.QEMU = &instance.QEMULaunch{MemoryBytes: q.MemoryBytes, CPUs: q.CPUs}
	}
	if t := f.Traffic; t != nil {
		ts := &TrafficSpec{MinReady: t.MinReady, DrainDelay: t.DrainDelay, KeepMin: t.KeepMin, BackendTimeout: t.BackendTimeout}
		for _, x := range t.Files {
			ts.Files = append(ts.Files, TrafficFile{Name: x.Name, Path: x.Path})
		}
		for _, x := range t.HAProxy {
			ts.HAProxy = append(ts.HAProxy, TrafficHAProxy{Name: x.Name, Socket: x.Socket, Backend: x.Backend, Check: x.Check})
		}
		for _, x := range t.Consul {
			ts.Consul = append(ts.Consul, TrafficConsul{Name: x.Name, Address: x.Address, Service: x.Service, Tags: slices.Clone(x.Tags),
				Meta: maps.Clone(x.Meta), TokenFile: x.TokenFile, CAFile: x.CAFile, CertFile: x.CertFile, KeyFile: x.KeyFile, TLSServerName: x.TLSServerName})
		}
		s.Traffic = ts
	}
	for _, c := range f.Health.Checks {
		sc := Check{Name: c.Name, Kind: c.Kind, Path: c.Path, ExpectStatus: slices.Clone(c.ExpectStatus),
			Service: c.Service, Command: slices.Clone(c.Command), Interval: c.Interval, Timeout: c.Timeout, HealthyThreshold: c.HealthyThreshold, UnhealthyThreshold: c.UnhealthyThreshold,
			StartupTimeout: c.StartupTimeout}
		if x := c.Consul; x != nil {
			sc.Consul = &ConsulCheck{Address: x.Address, TokenFile: x.TokenFile, CAFile: x.CAFile, CertFile: x.CertFile, KeyFile: x.KeyFile, TLSServerName: x.TLSServerName}
		}
		s.Health.Checks = append(s.Health.Checks, sc)
	}
	return s
}

// rolloutOf keeps of the rollout policy only what differs from the
// defaults.
func rolloutOf(r *config.Rollout) RolloutSpec {
	s := RolloutSpec{MaxSurge: r.MaxSurge, MaxUnavailable: r.MaxUnavailable, Bake: r.Bake}
	if r.ProgressDeadline != config.DefaultProgressDeadline {
		s.ProgressDeadline = r.ProgressDeadline
	}
	if r.OnFailure != config.DefaultOnFailure {
		s.OnFailure = r.OnFailure
	}
	if r.Strategy == config.StrategyCanary {
		s.Canary = &CanarySpec{Count: r.Canary, PromoteAfter: r.PromoteAfter}
	}
	s.BlueGreen = r.Strategy == config.StrategyBlueGreen
	s.Checkpoints, s.CheckpointPause = slices.Clone(r.Checkpoints), r.CheckpointPause
	if a := r.Analysis; a != nil {
		s.Analysis = &AnalysisSpec{Prometheus: a.Prometheus, Interval: a.Interval}
		for _, m := range a.Metrics {
			s.Analysis.Metrics = append(s.Analysis.Metrics, AnalysisMetric{Name: m.Name, Query: m.Query, Success: m.Success, Failure: m.Failure,
				Count: m.Count, FailureLimit: m.FailureLimit, InconclusiveLimit: m.InconclusiveLimit, ConsecutiveErrorLimit: m.ConsecutiveErrorLimit,
				ConsecutiveSuccess: m.ConsecutiveSuccess, DryRun: m.DryRun})
		}
	}
	return s
}

// remediationOf keeps of the guards' settings only those that differ
// from the defaults (see RemediationSpec).
func remediationOf(r *config.Remediation) RemediationSpec {
	s := RemediationSpec{Enabled: r.Enabled, MaxUnhealthy: r.MaxUnhealthy, MaxParallel: r.MaxParallel, Report: slices.Clone(r.Report),
		NoStormGuard: !r.StormGuard}
	if r.Rate != config.DefaultFleetRate {
		s.Rate = r.Rate
	}
	if r.SecondaryRate != config.DefaultSecondaryRate {
		s.SecondaryRate = r.SecondaryRate
	}
	if t := r.UnhealthyThreshold; t != nil && *t != config.DefaultUnhealthyShare {
		q := *t
		s.UnhealthyThreshold = &q
	}
	if r.StormCooldown != config.DefaultStormCooldown {
		d := r.StormCooldown
		s.StormCooldown = &d
	}
	s.HealthyDelay = r.HealthyDelay
	if r.FlapThreshold != config.DefaultFlapThreshold {
		n := r.FlapThreshold
		s.FlapThreshold = &n
	}
	if r.FlapWindow != config.DefaultFlapWindow {
		d := r.FlapWindow
		s.FlapWindow = &d
	}
	if q := r.Quarantine; q != nil {
		s.Quarantine = &QuarantineSpec{Max: q.Max, TTL: q.TTL, Reasons: slices.Clone(q.Reasons)}
	}
	if r.MaxLaunchFailures != config.DefaultMaxLaunchFailures {
		n := r.MaxLaunchFailures
		s.MaxLaunchFailures = &n
	}
	return s
}

// TemplateHash is the fleet's launch template hash.
func (s *FleetSpec) TemplateHash() string { return instance.TemplateHash(s.Provider, s.Launch) }
