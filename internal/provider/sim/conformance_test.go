package sim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/conformance"
)

// simKnownFailures lists the conformance behaviours the sim provider is
// known to fail; keep it empty. The suite applies to a provider without
// processes because the sim models what it checks: its "process" is the
// instance's listener on a host (Live counts running instances on the
// hosts, Kill makes one exit through the host's control API, Mutate
// records an added path there), a command whose absolute path does not
// exist fails the launch, the sample app's -ignore-sigterm makes
// Terminate wait out the grace, and the crashing image is one whose
// sim.json says exit_after = "0s".
var simKnownFailures = map[string]string{}

func TestConformance(t *testing.T) {
	healthyDir, crashingDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(healthyDir, "app"), []byte("sample app\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(crashingDir, simConfigFile), []byte(`{"exit_after": "0s"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	importer := open(t, simDir(t), Options{})
	healthy, err := importer.Import(t.Context(), healthyDir)
	if err != nil {
		t.Fatal(err)
	}
	crashing, err := importer.Import(t.Context(), crashingDir)
	if err != nil {
		t.Fatal(err)
	}
	// each calls fn with the list of every host of dir, read without a provider.
	each := func(t *testing.T, dir string, fn func(k int, recs []record)) {
		for k := range hostPIDs(t, dir) {
			h := newHostClient(k, filepath.Join(dir, "hosts", fmt.Sprint(k)+".sock"))
			recs, err := h.list(t.Context())
			h.close()
			if err != nil {
				t.Fatalf("list host %d: %v", k, err)
			}
			fn(k, recs)
		}
	}
	conformance.Run(t, conformance.Harness{
		Name: Name,
		NewState: func(t *testing.T) string {
			dir := simDir(t)
			p := open(t, dir, Options{})
			for want, src := range map[string]string{healthy: healthyDir, crashing: crashingDir} {
				if got, err := p.Import(t.Context(), src); err != nil || got != want {
					t.Fatalf("import %s: %s, %v; want %s", src, got, err, want)
				}
			}
			return dir
		},
		Open:     func(t *testing.T, dir string) conformance.Provider { return open(t, dir, Options{}) },
		Healthy:  healthy,
		Crashing: crashing,
		Missing:  "sha256:" + strings.Repeat("0", 64),
		Template: instance.Launch{Env: map[string]string{"APP_MODE": "conformance"}},
		Mutate: func(t *testing.T, dir string, obs instance.Observed, name string) string {
			if err := control(t, dir, hostOf(t, obs), "POST", "/v1/instances/"+obs.ID+"/mutate", map[string]string{"path": name}, nil); err != nil {
				t.Fatal(err)
			}
			return name
		},
		Kill: func(t *testing.T, dir string, obs instance.Observed) {
			if err := control(t, dir, hostOf(t, obs), "POST", "/v1/instances/"+obs.ID+"/exit", nil, nil); err != nil {
				t.Fatal(err)
			}
		},
		Live: func(t *testing.T, dir, id string) int {
			n := 0
			each(t, dir, func(_ int, recs []record) {
				for _, r := range recs {
					if r.ID == id && !r.Exited {
						n++
					}
				}
			})
			return n
		},
		Leftovers: func(t *testing.T, dir, id string) []string {
			var left []string
			each(t, dir, func(k int, recs []record) {
				for _, r := range recs {
					if r.ID == id {
						left = append(left, fmt.Sprintf("instance on host %d (exited %v)", k, r.Exited))
					}
				}
			})
			if _, err := os.Lstat(filepath.Join(dir, "ids", id)); err == nil {
				left = append(left, "placement ids/"+id)
			}
			return left
		},
		Remove: func(t *testing.T, dir, id string) {
			for k := range hostPIDs(t, dir) {
				_ = control(t, dir, k, "DELETE", "/v1/instances/"+id, nil, nil)
			}
			_ = os.Remove(filepath.Join(dir, "ids", id))
		},
		KnownFailures: simKnownFailures,
	})
}
