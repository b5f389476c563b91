package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/state"
)

// brokenRun is one subtest of TestBrokenInstanceIsReplaced: a healthy
// fleet, the instance broken and what became of it.
type brokenRun struct {
	t   *testing.T
	dir string // the subtest's own scratch directory
	e   *env
	en  *engine // the engine, for docker cases
	// fleet is the fleet's name, size its size, digest the image every
	// instance must run ("" for any).
	fleet  string
	size   int
	digest string
	// timeout bounds the wait for the fleet to be healthy at the start,
	// and again after the replacement.
	timeout time.Duration
	before  api.Fleet    // the healthy fleet before the break
	victim  api.Instance // the instance that is broken
	ev      *state.Event // the victim's terminated event
	after   api.Fleet    // the fleet whole again, without the victim
}

// startLocal starts an agent keeping the local fleet name (in the file
// name.hcl) of size instances that hcl describes, and waits until it is
// healthy.
func (r *brokenRun) startLocal(name string, size int, hcl string) {
	r.t.Helper()
	r.e = newEnv(r.t, envOpts{})
	r.fleet, r.size = name, size
	r.e.writeFleet(name+".hcl", hcl)
	r.e.start()
	r.before = r.e.waitHealthy(name, size, "", r.timeout)
}

// startDocker starts an agent keeping a docker fleet of size instances of
// the sample app v1 (see startDockerFleet).
func (r *brokenRun) startDocker(what string, size int) {
	r.t.Helper()
	s := startDockerFleet(r.t, what, size, nil)
	r.e, r.en, r.fleet, r.size, r.digest = s.e, s.en, s.fleet.name, size, s.v1
	r.before = s.e.fleet(s.fleet.name)
}

// postFail makes the sample app instance fail its checks from now on:
// /healthz answers 500, the gRPC health service NOT_SERVING.
func (r *brokenRun) postFail() {
	r.t.Helper()
	resp, err := http.Post("http://"+r.victim.Address+"/fail", "text/plain", nil)
	if err != nil {
		r.t.Fatal(err)
	}
	resp.Body.Close()
}

// brokenInstanceCase is one way to break an instance.
type brokenInstanceCase struct {
	name string
	// start starts an agent keeping a fleet until it is healthy
	// (r.startLocal, r.startDocker); timeout is r.timeout.
	start   func(r *brokenRun)
	timeout time.Duration
	// victim is the index in the healthy fleet of the instance breakIt
	// breaks.
	victim  int
	breakIt func(r *brokenRun)
	// reason is the reason of the victim's terminated event. Each text
	// evidence returns must be in the event's evidence lines joined with
	// join.
	reason   string
	evidence func(r *brokenRun) []string
	join     string
	// healthyFirst waits for the fleet to be whole again without the
	// victim, and then requires its terminated event to be there
	// already; otherwise the terminated event is waited for first, then
	// the fleet.
	healthyFirst bool
	// othersKept requires every instance but the victim to be kept.
	othersKept bool
	// check, if set, checks more once the fleet is whole again.
	check func(r *brokenRun)
}

// TestBrokenInstanceIsReplaced breaks one instance of a healthy fleet,
// one way per subtest: killed, failing a check of each kind, changed in
// place, on the local provider and on docker. Each time immutd replaces
// that instance, with the reason and evidence that say what happened.
// One subtest: go test -run 'TestBrokenInstanceIsReplaced/grpc'.
func TestBrokenInstanceIsReplaced(t *testing.T) {
	for _, tc := range []brokenInstanceCase{
		{
			// The instance's process is killed with SIGKILL.
			name:    "sigkill",
			start:   func(r *brokenRun) { r.startLocal("web", 3, fleetFile("web", 3, "v1", "")) },
			timeout: 30 * time.Second,
			victim:  0,
			breakIt: func(r *brokenRun) {
				if err := syscall.Kill(localPID(r.t, r.victim), syscall.SIGKILL); err != nil {
					r.t.Fatal(err)
				}
			},
			reason:       "exited",
			healthyFirst: true,
		},
		{
			// The instance's /healthz starts answering 500.
			name:     "http-check-fails",
			start:    func(r *brokenRun) { r.startLocal("web", 3, fleetFile("web", 3, "v1", "")) },
			timeout:  30 * time.Second,
			victim:   2,
			breakIt:  (*brokenRun).postFail,
			reason:   "unhealthy",
			evidence: func(*brokenRun) []string { return []string{"status 500"} },
			join:     " ",
			check:    checkSurgeFirst,
		},
		{
			// The sample app serves the gRPC health service next to its
			// HTTP endpoints on its one port; /fail turns its status to
			// NOT_SERVING too. The evidence is the status.
			name: "grpc-not-serving",
			start: func(r *brokenRun) {
				r.startLocal("rpc", 2, checkFleet("rpc", 2, []string{"-grpc-health"}, `    grpc "health" {
      interval            = "1s"
      timeout             = "1s"
      unhealthy_threshold = 2
      startup_timeout     = "60s"
    }`))
			},
			timeout: 60 * time.Second,
			victim:  0,
			breakIt: (*brokenRun).postFail,
			reason:  "unhealthy",
			evidence: func(r *brokenRun) []string {
				return []string{fmt.Sprintf(`grpc "health": grpc.health.v1.Health/Check %s: NOT_SERVING`, r.victim.Address)}
			},
			join:       "\n",
			othersKept: true,
		},
		{
			// An exec check runs a script on the agent's host for every
			// instance; the script fails for the instance whose id the
			// test names in a file. The evidence is the script's output.
			name: "exec-exits-1",
			start: func(r *brokenRun) {
				must(r.t, os.WriteFile(filepath.Join(r.dir, "check.sh"), []byte(`#!/bin/sh
if [ -e "$1/fail-$IMMUTD_INSTANCE_ID" ]; then
  echo "marked as failing: $IMMUTD_INSTANCE_ID of $IMMUTD_FLEET at $IMMUTD_ADDRESS"
  exit 1
fi
echo "fine"
`), 0o755))
				r.startLocal("batch", 2, checkFleet("batch", 2, nil, fmt.Sprintf(`    exec "script" {
      command             = [%q, %q]
      interval            = "1s"
      timeout             = "1s"
      unhealthy_threshold = 2
      startup_timeout     = "60s"
    }`, filepath.Join(r.dir, "check.sh"), r.dir)))
			},
			timeout: 60 * time.Second,
			victim:  0,
			breakIt: func(r *brokenRun) {
				must(r.t, os.WriteFile(filepath.Join(r.dir, "fail-"+r.victim.ID), nil, 0o644))
			},
			reason: "unhealthy",
			evidence: func(r *brokenRun) []string {
				return []string{
					fmt.Sprintf("exit status 1: marked as failing: %s of batch at %s", r.victim.ID, r.victim.Address),
					`exec "script": run ` + filepath.Join(r.dir, "check.sh"),
				}
			},
			join:       "\n",
			othersKept: true,
		},
		{
			// A file of the instance's image is edited in place.
			name:    "file-edited",
			start:   func(r *brokenRun) { r.startLocal("web", 2, fleetFile("web", 2, "v1", "")) },
			timeout: 30 * time.Second,
			victim:  1,
			breakIt: func(r *brokenRun) {
				fh, err := os.OpenFile(filepath.Join(r.victim.Location, "config", "app.conf"), os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					r.t.Fatal(err)
				}
				fmt.Fprintln(fh, `greeting = "patched by hand"`)
				fh.Close()
			},
			reason:   "drift_mutated",
			evidence: func(*brokenRun) []string { return []string{"config/app.conf"} },
			join:     " ",
		},
		{
			// The instance's root is replaced by a symlink to another
			// directory: that is drift, the link is not followed, and
			// terminating the instance leaves the link's target alone.
			name:    "root-replaced-by-symlink",
			start:   func(r *brokenRun) { r.startLocal("web", 1, fleetFile("web", 1, "v1", "")) },
			timeout: 30 * time.Second,
			victim:  0,
			breakIt: func(r *brokenRun) {
				target := filepath.Join(r.dir, "elsewhere")
				must(r.t, os.MkdirAll(filepath.Join(target, "precious"), 0o755))
				must(r.t, os.WriteFile(filepath.Join(target, "precious", "data"), []byte("keep me"), 0o644))
				must(r.t, os.Rename(r.victim.Location, r.victim.Location+".moved"))
				must(r.t, os.Symlink(target, r.victim.Location))
			},
			reason:   "drift_mutated",
			evidence: func(*brokenRun) []string { return []string{"type . dir->symlink"} },
			join:     " ",
			check: func(r *brokenRun) {
				if b, err := os.ReadFile(filepath.Join(r.dir, "elsewhere", "precious", "data")); err != nil || string(b) != "keep me" {
					r.t.Fatalf("the link's target was touched: %q %v", b, err)
				}
				_ = os.RemoveAll(r.victim.Location + ".moved")
			},
		},
		{
			// `docker kill` of the instance's container. The dead container
			// is removed, and the fleet has 3 containers.
			name:    "docker-sigkill",
			start:   func(r *brokenRun) { r.startDocker("kill", 3) },
			timeout: 60 * time.Second,
			victim:  1,
			breakIt: func(r *brokenRun) {
				ctx, cancel := r.en.ctx()
				defer cancel()
				if err := r.en.cli.ContainerKill(ctx, r.victim.ProviderRef, "SIGKILL"); err != nil {
					r.t.Fatal(err)
				}
			},
			reason:       "exited",
			evidence:     func(*brokenRun) []string { return []string{"exited with code 137"} },
			join:         " ",
			healthyFirst: true,
			check: func(r *brokenRun) {
				r.e.waitFor("the killed container to be removed", 30*time.Second, func() (bool, string) {
					_, err := r.en.inspect(r.victim.ProviderRef)
					return cerrdefs.IsNotFound(err), fmt.Sprint(err)
				})
				if cs := r.en.mustContainers(r.fleet); len(cs) != 3 {
					r.t.Fatalf("%d containers of the fleet after the replacement, want 3", len(cs))
				}
			},
		},
		{
			// A file of the image is changed by a process run in the
			// container.
			name:    "docker-file-edited-inside",
			start:   func(r *brokenRun) { r.startDocker("inplace", 2) },
			timeout: 60 * time.Second,
			victim:  0,
			breakIt: func(r *brokenRun) {
				r.en.execIn(r.victim.ProviderRef, "/bin/sampleapp", "-write-file", "/config/app.conf", "-content", "x")
			},
			reason:   "drift_mutated",
			evidence: func(*brokenRun) []string { return []string{"modified /config/app.conf"} },
			join:     "\n",
			check:    checkContainers,
		},
		{
			// A file is added to the container from outside, as `docker
			// cp` does.
			name:    "docker-file-copied-in",
			start:   func(r *brokenRun) { r.startDocker("copied", 2) },
			timeout: 60 * time.Second,
			victim:  1,
			breakIt: func(r *brokenRun) {
				r.en.copyFile(r.victim.ProviderRef, "/config/added-by-e2e.conf", "greeting = \"copied in\"\n")
			},
			reason:   "drift_mutated",
			evidence: func(*brokenRun) []string { return []string{"added /config/added-by-e2e.conf"} },
			join:     "\n",
			check:    checkContainers,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &brokenRun{t: t, dir: t.TempDir(), timeout: tc.timeout}
			tc.start(r)
			r.victim = r.before.Instances[tc.victim]
			tc.breakIt(r)
			if tc.healthyFirst {
				r.after = r.e.waitHealthy(r.fleet, r.size, r.digest, r.timeout, r.victim.ID)
				if r.ev = findEvent(r.e.events(), "terminated", r.victim.ID); r.ev == nil {
					t.Fatalf("want a terminated event with reason %s for %s, got none", tc.reason, r.victim.ID)
				}
			} else {
				r.ev = r.e.waitTerminated(r.fleet, r.victim.ID)
			}
			t.Logf("%s terminated: %s: %q", r.victim.ID, r.ev.Reason, r.ev.Evidence)
			if r.ev.Reason != tc.reason {
				t.Fatalf("want reason %s, got %+v", tc.reason, r.ev)
			}
			if tc.evidence != nil {
				evidence := strings.Join(r.ev.Evidence, tc.join)
				for _, want := range tc.evidence(r) {
					if !strings.Contains(evidence, want) {
						t.Fatalf("want reason %s with evidence %q, got %+v", tc.reason, want, r.ev)
					}
				}
			}
			if !tc.healthyFirst {
				r.after = r.e.waitHealthy(r.fleet, r.size, r.digest, r.timeout, r.victim.ID)
			}
			if tc.othersKept {
				for _, in := range r.before.Instances {
					if in.ID != r.victim.ID && !ids(r.after)[in.ID] {
						t.Fatalf("instance %s, which was not broken, was replaced too: %s", in.ID, describe(r.after))
					}
				}
			}
			if tc.check != nil {
				tc.check(r)
			}
		})
	}
}

// checkSurgeFirst: the replacement was launched, and judged healthy,
// before the broken instance's termination was even planned.
func checkSurgeFirst(r *brokenRun) {
	var planned, launched uint64
	for _, x := range r.e.events() {
		switch {
		case x.Action == "terminate_planned" && x.InstanceID == r.victim.ID:
			planned = x.Seq
		case x.Action == "launched" && x.Reason == "replacement" && launched == 0 && x.Seq > 0:
			for _, in := range r.after.Instances {
				if in.ID == x.InstanceID {
					launched = x.Seq
				}
			}
		}
	}
	if launched == 0 || planned == 0 || launched > planned {
		r.t.Fatalf("replacement launched at event %d, the unhealthy instance's terminate planned at %d: not surge-first", launched, planned)
	}
}

// checkContainers: the engine has exactly the fleet's size of containers
// of the fleet.
func checkContainers(r *brokenRun) {
	if cs := r.en.mustContainers(r.fleet); len(cs) != r.size {
		r.t.Fatalf("%d containers of the fleet, want %d", len(cs), r.size)
	}
}

// checkFleet is a local fleet of the sample app v1 judged by the given
// health block only. Probes get a second each: at a load of 10 a probe
// of a loopback instance, or the start of a small script, must not be
// what fails.
func checkFleet(name string, size int, args []string, health string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	return fmt.Sprintf(`fleet %q {
  size     = %d
  provider = %q
  image    = %q
  launch {
    stop_grace = "2s"
    args       = [%s]
  }
  health {
%s
  }
  drift {
    interval = "1s"
  }
}
`, name, size, config.ProviderLocal, filepath.Join(imagesDir, "sampleapp-v1"), strings.Join(quoted, ", "), health)
}
