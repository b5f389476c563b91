package config

import (
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The sim provider (provider "sim" { ... }) is a benchmark tool, not a
// production provider: simulated instances, cheap enough that 100,000 of
// them run on one machine (internal/provider/sim). Fleets may name it
// only as provider = "sim", and only agents with the block run it (as
// with qemu, the leader reports a fleet of a provider its agent lacks);
// messages that list the providers do not offer it.

// SimProvider configures the sim provider. It exists only when the block
// is there (Enabled).
type SimProvider struct {
	Enabled bool `json:"enabled"`
	// Dir holds the host processes' sockets, the placements and the
	// image store; agents that share it share the instances. Default
	// <data_dir>/sim; a cluster of more than one agent must set it.
	Dir string `json:"dir"`
	// Binary is the host program. Default immutd-simhost beside immutd,
	// else from PATH.
	Binary string `json:"binary,omitempty"`
	// LaunchLatency is spent in every launch. Default 0.
	LaunchLatency time.Duration `json:"launch_latency,omitempty"`
	// FailureRate is the fraction of launches that fail (retryably). Default 0.
	FailureRate float64 `json:"failure_rate,omitempty"`
	// HealthFlipRate is the fraction of healthy instances per minute
	// whose health flips to failing. Default 0.
	HealthFlipRate float64 `json:"health_flip_rate,omitempty"`
	// Seed makes failures and flips reproducible. Default 0.
	Seed uint64 `json:"seed,omitempty"`
	// HostCapacity is how many instances one host process serves.
	// Default 5000 (internal/provider/sim's DefaultHostCapacity).
	HostCapacity int `json:"host_capacity,omitempty"`
}

// Sim defaults and bounds (they match internal/provider/sim's).
const (
	DefaultSimSubdir    = "sim"
	ProviderSim         = "sim"
	providerSim         = ProviderSim
	maxSimLaunchLatency = 10 * time.Minute
	maxSimHostCapacity  = 12000
)

// fleetProvider decodes a fleet's provider: one of providerNames, which
// messages list, or the sim benchmark tool, which they do not offer.
func (s *section) fleetProvider(dst *string) got {
	var v string
	g := s.strAs("provider", orList(providerNames), &v)
	if g != valid {
		return g
	}
	if v != providerSim && !slices.Contains(providerNames, v) {
		s.fail("provider", "must be %s, got %q", orList(providerNames), v)
		return invalid
	}
	*dst = v
	return valid
}

// decodeSimProvider decodes provider "sim" { ... }; dirSet says whether
// dir was given.
func decodeSimProvider(s *section, p *SimProvider) (dirSet bool) {
	p.Enabled = true
	dirSet = s.text("dir", &p.Dir, checkNotEmpty) != missing
	s.text("binary", &p.Binary, checkNotEmpty)
	s.duration("launch_latency", 0, maxSimLaunchLatency, &p.LaunchLatency)
	s.fraction("failure_rate", &p.FailureRate)
	s.fraction("health_flip_rate", &p.HealthFlipRate)
	if f, g := s.number("seed", "a whole number from 0 to 2^64-1"); g == valid {
		if n, acc := f.Uint64(); !f.IsInt() || f.Sign() < 0 || acc != big.Exact {
			s.fail("seed", "must be a whole number from 0 to 2^64-1, got %s", formatBig(f))
		} else {
			p.Seed = n
		}
	}
	s.integer("host_capacity", 1, maxSimHostCapacity, &p.HostCapacity)
	return dirSet
}

// fraction decodes a number from 0 to 1.
func (s *section) fraction(name string, dst *float64) got {
	const expect = "a fraction from 0 to 1"
	f, g := s.number(name, expect)
	if g != valid {
		return g
	}
	v, _ := f.Float64()
	if f.Sign() < 0 || v > 1 {
		s.fail(name, "must be %s, got %s", expect, formatBig(f))
		return invalid
	}
	*dst = v
	return valid
}

// simDefaults fills the sim block's defaults; it returns a message when a
// cluster of several agents lacks the shared dir.
func simDefaults(a *Agent, dirSet bool) string {
	if !a.Sim.Enabled {
		return ""
	}
	if !dirSet && a.DataDir != "" {
		a.Sim.Dir = filepath.Join(a.DataDir, DefaultSimSubdir)
	}
	if a.Cluster.Multi() && !dirSet {
		return "a cluster of more than one agent needs dir set to one directory all agents share (all on one host): the leader makes every provider call, and the simulated instances are loopback sockets of this machine"
	}
	return ""
}

// simImage checks a sim fleet's image: any file or directory.
func (s *section) simImage(abs, shown string) {
	_, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.fail("image", "sim image %q does not exist (a sim image is any file or directory)", shown)
	case err != nil:
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		s.fail("image", "cannot read sim image %q: %v", shown, err)
	}
}
