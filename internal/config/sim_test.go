package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAgentSimBlock(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.hcl")
	parse := func(src string) *Agent {
		t.Helper()
		a, err := parseAgent(file, file, []byte(src), fixedEnv(""))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := parse(`data_dir = "data"
fleets_dir = "fleets.d"
`)
	if a.Sim.Enabled {
		t.Errorf("sim provider enabled without its block: %+v", a.Sim)
	}
	a = parse(`data_dir = "data"
fleets_dir = "fleets.d"
provider "sim" {}
`)
	if want := (SimProvider{Enabled: true, Dir: filepath.Join(dir, "data", "sim")}); a.Sim != want {
		t.Errorf("defaults: %+v, want %+v", a.Sim, want)
	}
	a = parse(`data_dir = "data"
fleets_dir = "fleets.d"
provider "sim" {
  dir              = "bench/sim"
  binary           = "/opt/immutd/immutd-simhost"
  launch_latency   = "200ms"
  failure_rate     = 0.05
  health_flip_rate = 0.01
  seed             = 18446744073709551615
  host_capacity    = 6000
}
`)
	want := SimProvider{Enabled: true, Dir: filepath.Join(dir, "bench", "sim"), Binary: "/opt/immutd/immutd-simhost",
		LaunchLatency: 200 * time.Millisecond, FailureRate: 0.05, HealthFlipRate: 0.01, Seed: 1<<64 - 1, HostCapacity: 6000}
	if a.Sim != want {
		t.Errorf("got %+v, want %+v", a.Sim, want)
	}
}

func TestFleetProviderSim(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "image.txt"), []byte("v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := `fleet "bench" {
  size     = 10000
  provider = "sim"
  image    = "image.txt"
  health {
    http "ok" { path = "/healthz" }
  }
}
`
	fs, err := ParseFleetFiles(dir, []File{{Name: "bench.hcl", Content: []byte(src)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(fs.Fleets) != 1 {
		t.Fatalf("got %d fleets", len(fs.Fleets))
	}
	f := fs.Fleets[0]
	if f.Provider != ProviderSim || f.Image != filepath.Join(dir, "image.txt") || f.Size != 10000 {
		t.Fatalf("got %+v", f)
	}
}
