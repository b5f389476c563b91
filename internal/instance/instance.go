// Package instance holds the vocabulary that providers and the reconciler
// share: what a provider observes about one instance, the launch template
// it launches one from (part of the replicated state, with its hash), and
// what drift inspection finds.
package instance

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// Phase is the provider's view of an instance's lifecycle.
type Phase string

const (
	// Running: the process or container is alive.
	Running Phase = "running"
	// Exited: it ended (crashed, was killed, OOM). ExitReason says how.
	Exited Phase = "exited"
)

// Observed is one instance as a provider lists it.
type Observed struct {
	ID           string    `json:"id"`
	Fleet        string    `json:"fleet"`
	ImageDigest  string    `json:"image_digest"`
	TemplateHash string    `json:"template_hash"`
	Phase        Phase     `json:"phase"`
	ExitReason   string    `json:"exit_reason,omitempty"`
	Address      string    `json:"address,omitempty"` // host:port probes use
	StartedAt    time.Time `json:"started_at"`
	// ProviderRef is the provider's own handle (pid, container id).
	ProviderRef string `json:"provider_ref,omitempty"`
	// Location tells an operator where to look (instance directory,
	// container name).
	Location string `json:"location,omitempty"`
}

// LaunchRequest is everything a provider needs to launch one instance.
// Launching the same InstanceID twice must find the first instance
// rather than create a second one.
type LaunchRequest struct {
	InstanceID   string `json:"instance_id"`
	Fleet        string `json:"fleet"`
	ImageDigest  string `json:"image_digest"`
	TemplateHash string `json:"template_hash"`
	Launch       Launch `json:"launch"`
}

// Drift kinds.
const (
	DriftImage    = "image"    // runs another image than desired
	DriftTemplate = "template" // launched from another launch template
	DriftMutated  = "mutated"  // changed in place
	DriftOrphan   = "orphan"   // no record explains it
)

// Finding is the result of an in-place drift inspection that found a
// difference. Evidence lists what differs, one item per path, e.g.
// "modified etc/app.conf", "added tmp.sh", "mode etc/x 0644->0755".
type Finding struct {
	Kind     string   `json:"kind"`
	Evidence []string `json:"evidence"`
}

// The environment every provider gives an instance. The fleet's launch env
// cannot set these (the config refuses them).
const (
	EnvInstanceID  = "IMMUTD_INSTANCE_ID"
	EnvFleet       = "IMMUTD_FLEET"
	EnvImageDigest = "IMMUTD_IMAGE_DIGEST"
	EnvPort        = "PORT"
)

// Env returns the instance's environment as sorted KEY=value pairs: base
// (the provider's own defaults), then the fleet's launch env, then the
// variables immutd sets, each overriding the ones before.
func (r LaunchRequest) Env(base map[string]string, port int) []string {
	vars := make(map[string]string, len(base)+len(r.Launch.Env)+4)
	for k, v := range base {
		vars[k] = v
	}
	for k, v := range r.Launch.Env {
		vars[k] = v
	}
	vars[EnvInstanceID] = r.InstanceID
	vars[EnvFleet] = r.Fleet
	vars[EnvImageDigest] = r.ImageDigest
	vars[EnvPort] = strconv.Itoa(port)
	out := make([]string, 0, len(vars))
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// ErrGone is wrapped by a provider's error for an instance it no longer
// has (terminated meanwhile): callers treat it as "gone", not as a fault.
var ErrGone = errors.New("no such instance")

// MaxEvidence caps the evidence items of a drift finding.
const MaxEvidence = 20

// CapEvidence keeps the first MaxEvidence items and counts the rest.
func CapEvidence(items []string) []string {
	if n := len(items); n > MaxEvidence {
		return append(items[:MaxEvidence:MaxEvidence], fmt.Sprintf("... and %d more", n-MaxEvidence))
	}
	return items
}
