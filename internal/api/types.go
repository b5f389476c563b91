// Package api is immutd's HTTP surface: /metrics, /healthz, /readyz and
// the JSON API under /v1/ (status, fleets, instances, events, fleet
// drain), plus the wire types and a small client the CLI uses.
package api

import (
	"fmt"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/state"
)

// Status is GET /v1/status.
type Status struct {
	Node string `json:"node"`
	// PID is the agent's process id (to signal it: kill -HUP, kill -9).
	PID          int       `json:"pid"`
	NodeID       string    `json:"node_id"`
	IsLeader     bool      `json:"is_leader"`
	Leader       string    `json:"leader"`
	LeaderID     string    `json:"leader_id"`
	Term         uint64    `json:"term"`
	AppliedIndex uint64    `json:"applied_index"`
	Generation   uint64    `json:"generation"`
	DesiredAt    time.Time `json:"desired_at"`
	// LastPass is when the leader last finished a reconcile pass; zero on
	// a follower.
	LastPass time.Time `json:"last_pass"`
	// Stale is true when the fleet view is a follower's replicated copy
	// without the leader's observations (health, drift).
	Stale bool `json:"stale"`
	// Diverged is set when this agent's fleet files differ from the
	// committed desired state (which stays in force); SourceNode says
	// whose files were committed.
	Diverged   bool   `json:"diverged,omitempty"`
	SourceNode string `json:"source_node,omitempty"`
	// LastContact is how long ago a follower heard from the leader.
	LastContact string       `json:"last_contact,omitempty"`
	Config      ConfigStatus `json:"config"`
	// DataDir says whether this agent can write its data directory: raft
	// cannot persist anything while it cannot.
	DataDir DataDirStatus `json:"data_dir"`
	Fleets  []Fleet       `json:"fleets"`
	Events  []state.Event `json:"events"`
	Version string        `json:"version"`
	// Pauses are the operators' pauses in force.
	Pauses []state.Pause `json:"pauses"`
	// Storm is set while every fleet fails at once (the cluster-wide
	// storm): nothing is killed for its health.
	Storm bool `json:"storm,omitempty"`
}

// ConfigStatus is the state of the fleet files as the serving agent last
// read them.
type ConfigStatus struct {
	OK       bool      `json:"ok"`
	Error    string    `json:"error,omitempty"`
	At       time.Time `json:"at"`
	Hash     string    `json:"hash,omitempty"`
	Fleets   int       `json:"fleets"`
	Rejected int       `json:"rejected_total"`
}

// DataDirStatus is the last check of the agent's data directory.
type DataDirStatus struct {
	Path     string    `json:"path"`
	Writable bool      `json:"writable"`
	Error    string    `json:"error,omitempty"`
	Free     uint64    `json:"free_bytes"`
	At       time.Time `json:"checked_at"`
}

// Block is a reason remediation is held back.
type Block struct {
	Cause  string `json:"cause"`
	Detail string `json:"detail"`
}

// Fleet is one fleet's desired state and what the leader sees of it.
type Fleet struct {
	Name           string         `json:"name"`
	Provider       string         `json:"provider"`
	Image          string         `json:"image"`
	ImageDigest    string         `json:"image_digest"`
	ResolveError   string         `json:"resolve_error,omitempty"`
	Generation     uint64         `json:"generation"`
	Size           int            `json:"size"`
	Desired        int            `json:"desired"`
	UpToDate       int            `json:"up_to_date"`
	States         map[string]int `json:"states"`
	Drifted        map[string]int `json:"drifted"`
	Blocked        []Block        `json:"blocked"`
	Unconfigured   bool           `json:"unconfigured"`
	Draining       bool           `json:"draining"`
	LaunchFailures int            `json:"launch_failures"`
	// LastLaunchError is the error of the fleet's last failed launch, in
	// full, while its launches keep failing.
	LastLaunchError string     `json:"last_launch_error,omitempty"`
	BackoffUntil    time.Time  `json:"backoff_until,omitempty"`
	Instances       []Instance `json:"instances"`
	// Version is the version the fleet runs (its target), FileVersion the
	// one its file names (0 before the leader recorded it); Reverted, set
	// while a revert is in force, says how they differ and how that ends.
	// Rollout sums up the rollout in progress.
	Version     int    `json:"version,omitempty"`
	FileVersion int    `json:"file_version,omitempty"`
	Reverted    string `json:"reverted,omitempty"`
	Rollout     string `json:"rollout,omitempty"`
}

// Instance is one instance.
type Instance struct {
	ID          string `json:"id"`
	Fleet       string `json:"fleet"`
	ImageDigest string `json:"image_digest"`
	// State is a reconcile.InstanceState: one of healthy, starting,
	// unhealthy, never_healthy, exited, gone, launching, terminating,
	// unknown (follower view).
	State    string `json:"state"`
	Address  string `json:"address"`
	Location string `json:"location,omitempty"`
	// ProviderRef is the provider's handle: a pid or a container id.
	ProviderRef string    `json:"provider_ref,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpToDate    bool      `json:"up_to_date"`
	Health      string    `json:"health,omitempty"`
	HealthSince time.Time `json:"health_since,omitempty"`
	// Evidence are the recent failed probe results.
	Evidence []string `json:"evidence,omitempty"`
	// Drift lists in-place changes found by the last inspection.
	Drift  []string `json:"drift,omitempty"`
	Intent string   `json:"intent,omitempty"`
	Orphan bool     `json:"orphan,omitempty"`
	// FailingOn and HealthyOn name the agents whose probes see the
	// instance failing or passing; a verdict needs a quorum of them.
	FailingOn []string `json:"failing_on,omitempty"`
	HealthyOn []string `json:"healthy_on,omitempty"`
	// Traffic is where the instance is with the fleet's traffic backends:
	// pending, admitting, admitted, draining or drained ("" for fleets
	// without a traffic gate). TrafficConnections is what a draining
	// instance still had at the last count.
	Traffic            string `json:"traffic,omitempty"`
	TrafficConnections int    `json:"traffic_connections,omitempty"`
	// Flapping: it failed remediation.flap_threshold times within
	// flap_window and is judged unhealthy while it passes; Recovering:
	// healthy again for less than healthy_delay, it counts as starting.
	Flapping   bool `json:"flapping,omitempty"`
	Recovering bool `json:"recovering,omitempty"`
}

// Member is one server of the cluster.
type Member struct {
	ID          string `json:"id"`
	Name        string `json:"name,omitempty"`
	Address     string `json:"address"`
	Suffrage    string `json:"suffrage"`
	Leader      bool   `json:"leader"`
	Healthy     *bool  `json:"healthy,omitempty"`
	LastContact string `json:"last_contact,omitempty"`
	LastIndex   uint64 `json:"last_index,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// InstanceOf is the one conversion of what is recorded and what the
// provider observed of an instance into the shape the API shows; either
// may be nil. The observation wins over the record. State, health,
// drift and intent are for the caller to fill in.
func InstanceOf(id, fleet string, rec *state.Instance, o *instance.Observed) Instance {
	ai := Instance{ID: id, Fleet: fleet}
	if rec != nil {
		ai.ImageDigest, ai.Address, ai.Location, ai.CreatedAt = rec.ImageDigest, rec.Address, rec.Location, rec.CreatedAt
		ai.ProviderRef = rec.ProviderRef
	}
	if o != nil {
		ai.ImageDigest, ai.Address, ai.Location, ai.ProviderRef = o.ImageDigest, o.Address, o.Location, o.ProviderRef
		if ai.CreatedAt.IsZero() {
			ai.CreatedAt = o.StartedAt
		}
	}
	return ai
}

// FleetHeader is a fleet's row as the desired state alone gives it,
// before any instance is added.
func FleetHeader(d *state.DesiredFleet, st state.FleetStats) Fleet {
	ro := RolloutOf(d)
	f := Fleet{Name: d.Spec.Name, Provider: d.Spec.Provider, Image: d.Spec.Image, ImageDigest: d.ImageDigest,
		ResolveError: d.ResolveError, Generation: d.Generation, Size: d.Spec.Size, Desired: d.Spec.Size,
		Unconfigured: d.Unconfigured, Draining: d.Draining, LaunchFailures: st.LaunchFailures,
		States: map[string]int{}, Drifted: map[string]int{}, Blocked: []Block{}, Instances: []Instance{},
		Version: ro.Target, FileVersion: ro.FileVersion, Reverted: ro.Divergence}
	if r := d.Rollout; r != nil {
		switch {
		case r.Paused:
			f.Rollout = fmt.Sprintf("to version %d paused: %s", r.Version, r.PauseReason)
		case !r.CompletedAt.IsZero():
			f.Rollout = fmt.Sprintf("to version %d complete, baking", r.Version)
		default:
			f.Rollout = fmt.Sprintf("to version %d, %d instances of it available", r.Version, r.Available)
		}
	}
	return f
}
