package agent

import (
	"fmt"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/provider/docker"
	"github.com/immutd/immutd/internal/provider/local"
	"github.com/immutd/immutd/internal/provider/qemu"
	"github.com/immutd/immutd/internal/provider/sim"
	"github.com/immutd/immutd/internal/reconcile"
)

// providerRegistry makes the providers an agent configuration names. It
// is the one place that knows providers by name; everything else finds
// what a provider can do by its interfaces (see internal/leader's
// capabilities).
func providerRegistry(cfg *config.Agent, log *zap.Logger) (map[string]reconcile.Provider, error) {
	providers := map[string]reconcile.Provider{}
	// In a cluster the local provider is used only with an explicitly
	// configured directory that all agents share (one host); elsewhere its
	// fleets are refused with a clear reason.
	if !cfg.Cluster.Multi() || cfg.Local.DirSet {
		lp, err := local.New(local.Options{Dir: cfg.Local.Dir, BindHost: cfg.Local.BindHost, LogDir: cfg.Local.LogDir,
			LogMaxSize: cfg.Local.LogMaxSize, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("agent: local provider: %w", err)
		}
		providers[config.ProviderLocal] = lp
	}
	dp, err := docker.New(docker.Options{Host: cfg.Docker.Host, CertPath: cfg.Docker.CertPath, TLSVerify: cfg.Docker.TLSVerify,
		PublishHost: cfg.Docker.PublishHost, KeptLogDir: filepath.Join(cfg.DataDir, "docker", "kept-logs"), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("agent: docker provider: %w", err)
	}
	providers[config.ProviderDocker] = dp
	// The qemu provider exists only when configured: New checks that the
	// host can run QEMU, so a host that cannot fails here, at the start.
	if q := cfg.QEMU; q.Enabled {
		qp, err := qemu.New(qemu.Options{Dir: q.Dir, Binary: q.Binary, Accel: q.Accel, BindHost: q.BindHost,
			BootSlots: q.BootSlots, SlotDir: q.SlotDir, BootWait: q.BootWait, Outbound: q.Outbound,
			LogDir: q.LogDir, LogMaxSize: q.LogMaxSize, LogKeep: q.LogKeep, LogMaxAge: q.LogMaxAge, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("agent: qemu provider: %w", err)
		}
		providers[config.ProviderQEMU] = qp
	}
	// The sim provider, a benchmark tool, exists only when configured:
	// New finds its host program, so an agent without one fails here.
	if s := cfg.Sim; s.Enabled {
		sp, err := sim.New(sim.Options{Dir: s.Dir, Binary: s.Binary, LaunchLatency: s.LaunchLatency, FailureRate: s.FailureRate,
			HealthFlipRate: s.HealthFlipRate, Seed: s.Seed, HostCapacity: s.HostCapacity, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("agent: sim provider: %w", err)
		}
		providers[config.ProviderSim] = sp
	}
	return providers, nil
}
