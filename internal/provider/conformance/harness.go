package conformance

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/reconcile"
)

// Provider is what the suite drives: what the executor needs of a
// provider.
type Provider = reconcile.Provider

// DriftInspector is the drift inspection capability the suite checks, as
// the leader finds it by type assertion.
type DriftInspector = leader.DriftInspector

// Harness is what differs per provider. Every function gets the running
// (sub)test and reports its own errors through it (t.Fatal); all of them
// must be safe for concurrent use, because the behaviours run in
// parallel, each over a state of its own.
type Harness struct {
	// Name is the provider's name as fleet files spell it (one of the
	// config.Provider* names); it is part of every TemplateHash the suite
	// computes.
	Name string

	// NewState prepares a fresh state location for one behaviour and
	// returns it: the local provider's directory (with the images
	// below imported), the docker engine's endpoint. It removes what it
	// made when t ends.
	NewState func(t *testing.T) string
	// Open makes a new provider object over state. Opening the same
	// state again is what an agent restart (or another agent taking
	// over) looks like to the provider. Open closes what it opened when
	// t ends.
	Open func(t *testing.T, state string) Provider

	// Healthy is the pinned digest of the sample app (cmd/sampleapp):
	// its process serves GET /healthz on the instance's Address until
	// it is stopped, and it takes the sample app's flags as
	// Launch.Args.
	Healthy string
	// Crashing is the pinned digest of an image whose process exits at
	// once, with a failure.
	Crashing string
	// Missing is a digest of the provider's form that no state has.
	Missing string
	// Template is the launch template the suite launches from. The
	// suite adds Args (and, for one behaviour, Command) to a copy.
	Template instance.Launch

	// Prefix begins every instance id the suite makes and every fleet
	// name but the one-character one, so the harness can recognise and
	// sweep them on a shared backend: empty, or 1-20 characters of
	// [a-z0-9-] starting with a letter or digit. With an empty Prefix
	// (a backend private to the state) the suite also launches the
	// shortest id, one character, which could collide on a shared one.
	Prefix string

	// Mutate changes the running instance in place, behind the
	// provider's back: it adds a regular file called name at the top of
	// the instance's filesystem and returns the path the provider's
	// drift evidence names it by (evidence "added <path>").
	Mutate func(t *testing.T, state string, obs instance.Observed, name string) string
	// Kill makes the instance's process die from outside the provider
	// (SIGKILL).
	Kill func(t *testing.T, state string, obs instance.Observed)
	// Live counts the processes or containers of instance id that are
	// alive on the backend, found without the provider.
	Live func(t *testing.T, state, id string) int
	// Leftovers describes everything the backend still holds for
	// instance id (processes, containers in any state, files), found
	// without the provider; empty when it holds nothing.
	Leftovers func(t *testing.T, state, id string) []string
	// Remove deletes whatever the backend still holds for instance id,
	// without the provider: the suite's last cleanup, which also works
	// when the provider misbehaves.
	Remove func(t *testing.T, state, id string)

	// KnownFailures maps the name of a behaviour (as Behaviours lists
	// them) that this provider is known to fail to the reason, with the
	// evidence. Such a behaviour is skipped with that reason unless
	// RunKnownFailuresEnv is set. A name that is no behaviour fails Run.
	KnownFailures map[string]string
}

// RunKnownFailuresEnv, set to any non-empty value, makes Run run the
// behaviours listed in Harness.KnownFailures instead of skipping them.
const RunKnownFailuresEnv = "IMMUTD_CONFORMANCE_RUN_KNOWN_FAILURES"

// Limits of the names the suite makes; they are the formats the
// providers' id check and the config's fleet name rule accept.
const (
	// MaxIDLen is the longest instance id providers accept:
	// [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
	MaxIDLen = 128
	// MaxFleetLen is the longest fleet name the config accepts:
	// [a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?.
	MaxFleetLen = 40
	// maxPrefixLen leaves room in a fleet name for the behaviour.
	maxPrefixLen = 20
)

var (
	validPrefix = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)
	validFleet  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)
)

// check says what is missing or wrong in the harness, all at once.
func (h *Harness) check() error {
	var errs []error
	missing := func(what string, isNil bool) {
		if isNil {
			errs = append(errs, fmt.Errorf("Harness.%s is required", what))
		}
	}
	missing("Name", h.Name == "")
	missing("NewState", h.NewState == nil)
	missing("Open", h.Open == nil)
	missing("Healthy", h.Healthy == "")
	missing("Crashing", h.Crashing == "")
	missing("Missing", h.Missing == "")
	missing("Mutate", h.Mutate == nil)
	missing("Kill", h.Kill == nil)
	missing("Live", h.Live == nil)
	missing("Leftovers", h.Leftovers == nil)
	missing("Remove", h.Remove == nil)
	if h.Prefix != "" && !validPrefix.MatchString(h.Prefix) {
		errs = append(errs, fmt.Errorf("Harness.Prefix %q: want 1-%d characters of [a-z0-9-] starting with a letter or digit", h.Prefix, maxPrefixLen))
	}
	if h.Healthy != "" && (h.Healthy == h.Crashing || h.Healthy == h.Missing || h.Crashing == h.Missing) {
		errs = append(errs, errors.New("Harness.Healthy, Crashing and Missing must be three different digests"))
	}
	known := map[string]bool{}
	for _, b := range behaviours {
		known[b.name] = true
	}
	var names []string
	for name := range h.KnownFailures {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		switch {
		case !known[name]:
			errs = append(errs, fmt.Errorf("Harness.KnownFailures names %q, which is no behaviour of the suite (%s)", name, strings.Join(Behaviours(), ", ")))
		case strings.TrimSpace(h.KnownFailures[name]) == "":
			errs = append(errs, fmt.Errorf("Harness.KnownFailures[%q] gives no reason", name))
		}
	}
	return errors.Join(errs...)
}

// Behaviours returns the names of the suite's behaviours, in the order
// Run runs them; they are the subtest names and the keys of
// Harness.KnownFailures.
func Behaviours() []string {
	out := make([]string, len(behaviours))
	for i, b := range behaviours {
		out[i] = b.name
	}
	return out
}
