package api

import (
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
