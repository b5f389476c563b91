package leader

import (
	"testing"

	"github.com/immutd/immutd/internal/state"
)

func TestNeedsCommit(t *testing.T) {
	fresh := state.New()
	committed := state.New()
	committed.Generation = 4
	committed.Proposed["a"] = "h1"
	tests := []struct {
		name string
		st   *state.State
		p    Proposal
		want bool
	}{
		{"nothing committed yet", fresh, Proposal{ProposerID: "a", SourceHash: "h1", StartHash: "h1"}, true},
		{"files unchanged since the agent's last proposal", committed, Proposal{ProposerID: "a", SourceHash: "h1", StartHash: "h9"}, false},
		{"files edited since the last proposal (also while the agent was down)", committed, Proposal{ProposerID: "a", SourceHash: "h2", StartHash: "h2"}, true},
		{"an agent that never proposed, files as at its start", committed, Proposal{ProposerID: "b", SourceHash: "h7", StartHash: "h7"}, false},
		{"an agent that never proposed, files edited since its start", committed, Proposal{ProposerID: "b", SourceHash: "h8", StartHash: "h7"}, true},
	}
	for _, tc := range tests {
		if got := NeedsCommit(tc.st, &tc.p); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
