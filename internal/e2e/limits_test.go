package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tests of the guards of finding 7 of the trust audit.

// TestClusterWideLimits: limits.max_instances caps the instances of all
// fleets together, and status names the limit for the fleet it holds
// back.
func TestClusterWideLimits(t *testing.T) {
	e := newEnv(t, envOpts{extra: "limits {\n  max_instances = 4\n  max_launches_in_flight = 2\n}\n"})
	e.writeFleet("web.hcl", fleetFile("web", 3, "v1", "  rollout {\n    max_surge = 3\n  }\n"))
	e.writeFleet("api.hcl", fleetFile("api", 3, "v1", "  rollout {\n    max_surge = 3\n  }\n"))
	e.start()
	e.waitFor("4 instances and the limit named", 60*time.Second, func() (bool, string) {
		st := e.status()
		n, named := 0, false
		for _, f := range st.Fleets {
			n += len(f.Instances)
			for _, b := range f.Blocked {
				named = named || b.Cause == "instance_limit" && strings.Contains(b.Detail, "max_instances is 4")
			}
		}
		return n == 4 && named, fmt.Sprintf("%d instances, %+v", n, st.Fleets)
	})
	e.waitPasses(3)
	if n := len(processesUnder(e.dataDir)); n != 4 {
		t.Fatalf("%d instance processes with max_instances 4", n)
	}
	// Never more than max_launches_in_flight launches were open at once:
	// every launch_planned is followed by its launched before a third opens.
	open, most := 0, 0
	for _, ev := range e.events() {
		switch ev.Action {
		case "launch_planned":
			open++
		case "launched", "launch_failed", "launch_abandoned":
			open--
		}
		most = max(most, open)
	}
	if most > 2 {
		t.Fatalf("%d launches were open at once with max_launches_in_flight 2", most)
	}
}

// TestScaledToZeroNeverHealthyFleetDrains: a fleet whose every instance
// is never healthy, and whose breaker is therefore open, still goes when
// it is scaled to 0 (the breaker guards replacements, not a scale-down).
func TestScaledToZeroNeverHealthyFleetDrains(t *testing.T) {
	e := newEnv(t, envOpts{})
	sick := func(size int) string {
		src := fleetFile("web", size, "v1", "  remediation {\n    max_unhealthy = 1\n    max_parallel = 2\n  }\n")
		src = strings.Replace(src, `path                = "/healthz"`, `path                = "/no-such-page"`, 1)
		return strings.Replace(src, `startup_timeout     = "15s"`, `startup_timeout     = "1s"`, 1)
	}
	e.writeFleet("web.hcl", sick(4))
	e.start()
	e.waitFor("the breaker to open", 60*time.Second, func() (bool, string) {
		f := e.fleet("web")
		for _, b := range f.Blocked {
			if b.Cause == "too_many_unhealthy" {
				return true, ""
			}
		}
		return false, describe(f)
	})
	e.writeFleet("web.hcl", sick(0))
	e.waitFor("every instance to go", 60*time.Second, func() (bool, string) {
		f := e.fleet("web")
		return len(f.Instances) == 0, describe(f)
	})
	if n := len(processesUnder(e.dataDir)); n != 0 {
		t.Fatalf("%d instance processes after scaling to 0", n)
	}
}

// TestManyFleetsShareOneImageHashOnce: committing 300 fleets that name
// one image bundle resolves (hashes) the bundle once, not twice per
// fleet: the agent reads a few bundles' worth of bytes, not 600.
func TestManyFleetsShareOneImageHashOnce(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.start()
	pid := e.pid()
	before := procValue(t, pid, "io", "rchar")
	var b strings.Builder
	for i := 0; i < 300; i++ {
		b.WriteString(fleetFile(fmt.Sprintf("f%03d", i), 0, "v1", ""))
	}
	e.writeFleet("many.hcl", b.String())
	e.waitFor("300 fleets committed", 120*time.Second, func() (bool, string) {
		st := e.status()
		return len(st.Fleets) == 300 && st.Generation > 0, fmt.Sprintf("%d fleets", len(st.Fleets))
	})
	bundle := dirBytes(t, filepath.Join(imagesDir, "sampleapp-v1"))
	read := procValue(t, pid, "io", "rchar") - before
	t.Logf("committing 300 fleets of one %d-byte bundle read %d bytes (%.1f bundles)", bundle, read, float64(read)/float64(bundle))
	if read > 20*bundle {
		t.Fatalf("committing 300 fleets of one bundle read %d bytes, %.0f times the bundle", read, float64(read)/float64(bundle))
	}
}
