package api

import (
	"fmt"
	"time"

	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Plan is GET /v1/plan: a dry run of the planner on the state as it is
// and on what the leader's last pass observed. Actions are what a pass
// would do now; Held what a guard holds back, and which guard.
type Plan struct {
	At       time.Time          `json:"at"`
	Observed time.Time          `json:"observed"`
	Leader   string             `json:"leader"`
	Actions  []reconcile.Action `json:"actions"`
	Held     []reconcile.Held   `json:"held"`
	// Blocked are each fleet's blocked causes, as status shows them.
	Blocked map[string][]Block `json:"blocked"`
	// Storm is set while every fleet fails at once.
	Storm  bool          `json:"storm,omitempty"`
	Pauses []state.Pause `json:"pauses"`
}

// Explanation is GET /v1/instances/{id}/explain: why an instance was
// killed, or why it has not been.
type Explanation struct {
	ID    string `json:"id"`
	Fleet string `json:"fleet,omitempty"`
	// Instance is the leader's view of it (nil when it is gone).
	Instance *Instance `json:"instance,omitempty"`
	// Planned is what the next pass would do with it; Held what a guard
	// holds back.
	Planned []reconcile.Action `json:"planned"`
	Held    []reconcile.Held   `json:"held"`
	// Events are the events about it, oldest first.
	Events []state.Event `json:"events"`
	// Verdict sums it up in one sentence.
	Verdict string `json:"verdict"`
}

// PauseRequest is POST /v1/pause.
type PauseRequest struct {
	Fleet  string        `json:"fleet,omitempty"`
	Reason string        `json:"reason"`
	For    time.Duration `json:"for,omitempty"`
	By     string        `json:"by,omitempty"`
}

// UnpauseRequest is POST /v1/unpause: one pause by id, or with All every
// pause (of Fleet, when set).
type UnpauseRequest struct {
	ID    string `json:"id,omitempty"`
	All   bool   `json:"all,omitempty"`
	Fleet string `json:"fleet,omitempty"`
	By    string `json:"by,omitempty"`
}

// Rollout is GET /v1/rollouts: a fleet's versions, its rollout and its
// revert.
type Rollout struct {
	Fleet string `json:"fleet"`
	// FileVersion is the version the fleet file names, Target the one the
	// fleet runs (another while a revert is in force).
	FileVersion int                 `json:"file_version"`
	Target      int                 `json:"target"`
	Versions    []Version           `json:"versions"`
	Rollout     *state.RolloutState `json:"rollout,omitempty"`
	Revert      *state.Revert       `json:"revert,omitempty"`
	// Canary is the canaries a canary rollout runs (0: rolling);
	// BlueGreen is set for the blue-green strategy.
	Canary    int  `json:"canary,omitempty"`
	BlueGreen bool `json:"blue_green,omitempty"`
	// Divergence says, while a revert is in force, how the fleet differs
	// from its file and how that ends.
	Divergence string `json:"divergence,omitempty"`
}

// Version is one kept version of a fleet (its launch settings, which may
// hold secrets in the environment, are not shown).
type Version struct {
	N            int       `json:"n"`
	Image        string    `json:"image"`
	ImageDigest  string    `json:"image_digest"`
	TemplateHash string    `json:"template_hash"`
	At           time.Time `json:"at"`
	RolledOutAt  time.Time `json:"rolled_out_at,omitzero"`
	Outcome      string    `json:"outcome"`
	EndedAt      time.Time `json:"ended_at,omitzero"`
	Detail       string    `json:"detail,omitempty"`
}

// RolloutRequest is POST /v1/fleets/NAME/rollout: step is pause, resume,
// abort or revert (to a version, or the last stable one).
type RolloutRequest struct {
	Step   string `json:"step"`
	To     int    `json:"to,omitempty"`
	Reason string `json:"reason,omitempty"`
	By     string `json:"by,omitempty"`
}

// RolloutOf is a fleet's rollout as the API shows it.
func RolloutOf(d *state.DesiredFleet) Rollout {
	r := Rollout{Fleet: d.Spec.Name, Target: d.Target().Version, Versions: []Version{}, Rollout: d.Rollout, Revert: d.Revert}
	if c := d.Spec.Rollout.Canary; c != nil {
		r.Canary = max(c.Count.Resolve(d.Spec.Size, true), 1)
	}
	r.BlueGreen = d.Spec.Rollout.BlueGreen
	for _, v := range d.Versions {
		r.Versions = append(r.Versions, Version{N: v.N, Image: v.Image, ImageDigest: v.ImageDigest, TemplateHash: v.TemplateHash,
			At: v.At, RolledOutAt: v.RolledOutAt, Outcome: v.Outcome, EndedAt: v.EndedAt, Detail: v.Detail})
	}
	if n := len(d.Versions); n > 0 {
		r.FileVersion = d.Versions[n-1].N
	}
	if rv := d.Revert; rv != nil {
		r.Divergence = DivergenceOf(d.Spec.Name, rv)
	}
	return r
}

// DivergenceOf says how a reverted fleet differs from its file, and the
// two ways it ends.
func DivergenceOf(fleet string, rv *state.Revert) string {
	s := fmt.Sprintf("runs version %d instead of its file's version %d (reverted at %s: %s); the file stays the source of truth: edit it (to version %d's image, or a fixed one) to end the revert, or `immutd rollout resume %s` to roll to version %d again",
		rv.To, rv.From, rv.At.UTC().Format(time.RFC3339), rv.Reason, rv.To, fleet, rv.From)
	if rv.ConfirmedBy != "" {
		return s + fmt.Sprintf("; confirmed by %s at %s", rv.ConfirmedBy, rv.ConfirmedAt.UTC().Format(time.RFC3339))
	}
	return s + fmt.Sprintf("; `immutd rollout confirm %s` acknowledges it", fleet)
}
