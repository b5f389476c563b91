package qemu

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/conformance"
)

// qemuKnownFailures lists the conformance behaviours the qemu provider is
// known to fail, each with the evidence; keep it empty.
var qemuKnownFailures = map[string]string{}

// TestConformance runs the provider conformance suite against real QEMU
// VMs: every behaviour gets a provider directory of its own with the
// sample app's VM image imported, and reopening the directory with a new
// Provider is an agent restart.
func TestConformance(t *testing.T) {
	healthyDir, crashingDir := sampleImage(t, 1), crashImage(t)
	importer := testProvider(t, t.TempDir())
	ctx := context.Background()
	healthy, err := importer.Import(ctx, healthyDir)
	if err != nil {
		t.Fatal(err)
	}
	crashing, err := importer.Import(ctx, crashingDir)
	if err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, conformance.Harness{
		Name: "qemu",
		NewState: func(t *testing.T) string {
			dir := t.TempDir()
			p := testProvider(t, dir)
			for want, src := range map[string]string{healthy: healthyDir, crashing: crashingDir} {
				if got, err := p.Import(ctx, src); err != nil || got != want {
					t.Fatalf("import %s: %s, %v; want %s", src, got, err, want)
				}
			}
			return dir
		},
		Open:     func(t *testing.T, dir string) conformance.Provider { return testProvider(t, dir) },
		Healthy:  healthy,
		Crashing: crashing,
		Missing:  "sha256:" + strings.Repeat("0", 64),
		// -allow-writes lets Mutate change the VM from inside.
		Template: instance.Launch{Args: []string{"-allow-writes"}, Env: map[string]string{"APP_MODE": "conformance"}},
		// The guest writes the file to its writable filesystem (the share
		// at /mnt/instance), as a process in the VM changing it would.
		Mutate: func(t *testing.T, dir string, obs instance.Observed, name string) string {
			url := fmt.Sprintf("http://%s/write?path=/mnt/instance/%s", obs.Address, name)
			resp, err := http.Post(url, "text/plain", strings.NewReader("changed in place\n"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("POST %s: %s", url, resp.Status)
			}
			return name
		},
		Kill: func(t *testing.T, dir string, obs instance.Observed) {
			pids := qemuProcs(t, dir, obs.ID)
			if len(pids) == 0 {
				t.Fatalf("no live QEMU of %s to kill", obs.ID)
			}
			for _, pid := range pids {
				if err := unix.Kill(pid, unix.SIGKILL); err != nil {
					t.Fatalf("kill %d: %v", pid, err)
				}
			}
		},
		Live: func(t *testing.T, dir, id string) int { return len(qemuProcs(t, dir, id)) },
		// The console log is kept on purpose (logs outlive the VM); all
		// else must go.
		Leftovers: func(t *testing.T, dir, id string) []string {
			var left []string
			for _, pid := range qemuProcs(t, dir, id) {
				left = append(left, fmt.Sprintf("live qemu %d", pid))
			}
			for _, rel := range []string{"instances/" + id, "locks/" + id + ".lock"} {
				if _, err := os.Lstat(filepath.Join(dir, rel)); err == nil {
					left = append(left, rel)
				}
			}
			return left
		},
		Remove: func(t *testing.T, dir, id string) {
			for _, pid := range qemuProcs(t, dir, id) {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		},
		KnownFailures: qemuKnownFailures,
	})
}
