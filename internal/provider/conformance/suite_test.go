package conformance

import (
	"strings"
	"testing"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/instance"
)

func TestNamesAreAtTheLimitsOfTheirFormats(t *testing.T) {
	for _, prefix := range []string{"", "immutd-test-0123abcd", "a"} {
		e := &env{h: &Harness{Prefix: prefix}, nonce: "abc123"}
		tags := map[string]string{}
		for _, b := range behaviours {
			e.tag = shortTag(b.name)
			if other, dup := tags[e.tag]; dup {
				t.Fatalf("behaviours %s and %s share the tag %q", other, b.name, e.tag)
			}
			tags[e.tag] = b.name
			e.fleet = e.fleetName("")
			if !config.ValidFleetName(e.fleet) || !strings.HasPrefix(e.fleet, prefix) {
				t.Errorf("prefix %q, %s: fleet %q is not a valid fleet name with the prefix", prefix, b.name, e.fleet)
			}
			if id := e.id("1"); instance.CheckID(id) != nil || !strings.HasPrefix(id, prefix) {
				t.Errorf("prefix %q, %s: id %q", prefix, b.name, id)
			}
			id := longID(e.idBase())
			if len(id) != MaxIDLen || instance.CheckID(id) != nil || !strings.HasPrefix(id, e.idBase()) {
				t.Errorf("prefix %q: long id %q (%d characters)", prefix, id, len(id))
			}
			fleet := longFleet(e.fleet + "-")
			if len(fleet) != MaxFleetLen || !config.ValidFleetName(fleet) {
				t.Errorf("prefix %q: long fleet %q (%d characters) is not a valid fleet name of %d", prefix, fleet, len(fleet), MaxFleetLen)
			}
			if config.ValidFleetName(fleet + "x") {
				t.Errorf("the config accepts a fleet name of %d characters; MaxFleetLen is stale", MaxFleetLen+1)
			}
		}
	}
	if instance.CheckID(strings.Repeat("a", MaxIDLen+1)) == nil {
		t.Error("instance.CheckID accepts an id longer than MaxIDLen")
	}
}

func TestHarnessCheck(t *testing.T) {
	if err := (&Harness{}).check(); err == nil || !strings.Contains(err.Error(), "Harness.NewState is required") ||
		!strings.Contains(err.Error(), "Harness.Leftovers is required") {
		t.Fatalf("empty harness: %v", err)
	}
	good := func() Harness {
		return Harness{
			Name: "test", Healthy: "h", Crashing: "c", Missing: "m",
			NewState: func(*testing.T) string { return "" },
			Open:     func(*testing.T, string) Provider { return nil },
			Mutate:   func(*testing.T, string, instance.Observed, string) string { return "" },
			Kill:     func(*testing.T, string, instance.Observed) {},
			Live:     func(*testing.T, string, string) int { return 0 },
			Leftovers: func(*testing.T, string, string) []string {
				return nil
			},
			Remove: func(*testing.T, string, string) {},
		}
	}
	h := good()
	if err := h.check(); err != nil {
		t.Fatalf("complete harness: %v", err)
	}
	for _, tc := range []struct {
		change func(*Harness)
		want   string
	}{
		{func(h *Harness) { h.KnownFailures = map[string]string{"NoSuchBehaviour": "x"} }, `names "NoSuchBehaviour", which is no behaviour`},
		{func(h *Harness) { h.KnownFailures = map[string]string{Behaviours()[0]: " "} }, "gives no reason"},
		{func(h *Harness) { h.Prefix = "Upper" }, `Harness.Prefix "Upper"`},
		{func(h *Harness) { h.Prefix = strings.Repeat("a", maxPrefixLen+1) }, "Harness.Prefix"},
		{func(h *Harness) { h.Crashing = h.Healthy }, "three different digests"},
	} {
		h := good()
		tc.change(&h)
		if err := h.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check() = %v, want an error with %q", err, tc.want)
		}
	}
}
