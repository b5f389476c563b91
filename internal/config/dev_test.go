package config

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDevConfigsLoad loads the files `make run` and `make run-vm` start
// from, so an edit that breaks them fails here rather than in a
// newcomer's terminal.
func TestDevConfigsLoad(t *testing.T) {
	for _, p := range []string{"../../configs/dev/agent.hcl", "../../configs/dev/agent-vm.hcl"} {
		if _, err := LoadAgent(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	a, err := LoadAgent("../../configs/dev/agent-vm.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if !a.QEMU.Enabled {
		t.Error("agent-vm.hcl does not enable the qemu provider")
	}
	// The fleet files are copied to run/fleets.d, two levels below the
	// images they name (build/images, build/vm-images).
	root := t.TempDir()
	fleets := filepath.Join(root, "run", "fleets.d")
	for _, d := range []string{fleets, filepath.Join(root, "build/images/sampleapp-v1"), filepath.Join(root, "build/vm-images/sampleapp-v1")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if d != fleets {
			if err := os.WriteFile(filepath.Join(d, "manifest.json"), []byte("{}"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range []string{"example.hcl", "vm.hcl"} {
		b, err := os.ReadFile(filepath.Join("../../configs/dev", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fleets, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	set, err := LoadFleets(fleets)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Fleets) != 2 || set.Fleets[0].Name != "vm" || set.Fleets[0].Provider != ProviderQEMU {
		t.Fatalf("fleets: %+v", set.Fleets)
	}
}
