package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/quantity"
)

var update = flag.Bool("update", false, "rewrite the .err golden files of testdata/invalid and testdata/agent/invalid")

// loadFleetFile loads one file of dir as if it were alone in the directory.
func loadFleetFile(t *testing.T, dir, name string) (*FleetSet, error) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return ParseFleetFiles(dir, []File{{Name: name, Content: src}})
}

// checkGolden compares err's text with the golden file, or rewrites it with -update.
func checkGolden(t *testing.T, golden string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("loaded without error; want the errors of %s", golden)
	}
	var diags Diagnostics
	if !errors.As(err, &diags) {
		t.Fatalf("error is %T, want Diagnostics: %v", err, err)
	}
	got := err.Error() + "\n"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, rerr := os.ReadFile(golden)
	if rerr != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", rerr)
	}
	if got != string(want) {
		t.Errorf("errors differ from %s\n--- got\n%s--- want\n%s", golden, got, want)
	}
	if len(diags) != strings.Count(string(want), "\n") {
		t.Errorf("got %d diagnostics, want one per golden line (%d)", len(diags), strings.Count(string(want), "\n"))
	}
}

func TestLoadFleetsInvalid(t *testing.T) {
	const dir = "testdata/invalid"
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	cases := 0
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir():
			cases++
			t.Run(name, func(t *testing.T) {
				_, err := LoadFleets(filepath.Join(dir, name))
				checkGolden(t, filepath.Join(dir, name+".err"), err)
			})
		case strings.HasSuffix(name, ".hcl"):
			cases++
			t.Run(strings.TrimSuffix(name, ".hcl"), func(t *testing.T) {
				_, err := loadFleetFile(t, dir, name)
				checkGolden(t, filepath.Join(dir, strings.TrimSuffix(name, ".hcl")+".err"), err)
			})
		case strings.HasSuffix(name, ".err"):
			base := strings.TrimSuffix(name, ".err")
			if _, err := os.Stat(filepath.Join(dir, base+".hcl")); err != nil {
				if _, err := os.Stat(filepath.Join(dir, base)); err != nil {
					t.Errorf("golden file %s has no case", name)
				}
			}
		}
	}
	if cases < 15 {
		t.Fatalf("found %d invalid cases, want at least 15", cases)
	}
}

func abs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func defaultChecks(checks ...Check) Health { return Health{Checks: checks} }

func TestLoadFleetsValid(t *testing.T) {
	const dir = "testdata/valid"
	// Spelled out rather than built from the default functions, so that a
	// changed default fails here.
	defaultDrift := Drift{Interval: 10 * time.Second, Orphans: "adopt"}
	share25, share40 := quantity.Percent(25), quantity.Percent(40)
	defaultRemediation := Remediation{Enabled: true, MaxUnhealthy: quantity.Percent(50), MaxParallel: 1, Mode: "act",
		Rate: quantity.Rate{N: 10, Per: 10 * time.Minute}, SecondaryRate: quantity.Rate{N: 1, Per: 10 * time.Minute},
		UnhealthyThreshold: &share25, StormCooldown: time.Minute, StormGuard: true, FlapThreshold: 3, FlapWindow: 10 * time.Minute, MaxLaunchFailures: 10}
	defaultRollout := Rollout{MaxSurge: quantity.Count(1), MaxUnavailable: quantity.Count(0), ProgressDeadline: 10 * time.Minute, OnFailure: "pause", Strategy: "rolling", Canary: quantity.Count(1)}
	defaultTCP := func(name string) Check {
		return Check{Name: name, Kind: "tcp", Interval: 2 * time.Second, Timeout: time.Second,
			HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: 60 * time.Second}
	}
	pos := func(file string, line int) Pos { return Pos{File: filepath.Join(dir, file), Line: line, Column: 1} }

	tests := []struct {
		file string
		want []*Fleet
	}{
		{"empty.hcl", []*Fleet{}},
		{"minimal_local.hcl", []*Fleet{{
			Name: "web", Pos: pos("minimal_local.hcl", 2), Size: 3, Provider: "local",
			Image:       abs(t, "testdata/images/sampleapp-v1"),
			Launch:      Launch{StopGrace: 10 * time.Second},
			Health:      defaultChecks(defaultTCP("port")),
			Drift:       defaultDrift,
			Remediation: defaultRemediation,
			Rollout:     defaultRollout,
		}}},
		{"minimal_docker.hcl", []*Fleet{{
			Name: "api", Pos: pos("minimal_docker.hcl", 1), Size: 2, Provider: "docker",
			Image:  "registry.example.com:5000/team/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			Launch: Launch{StopGrace: 10 * time.Second, Docker: &DockerLaunch{Port: 8080, NetworkMode: "bridge"}},
			Health: defaultChecks(Check{Name: "ready", Kind: "http", Path: "/", ExpectStatus: []int{200},
				Interval: 2 * time.Second, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: 60 * time.Second}),
			Drift:       defaultDrift,
			Remediation: defaultRemediation,
			Rollout:     defaultRollout,
		}}},
		{"full_docker.hcl", []*Fleet{{
			Name: "api", Pos: pos("full_docker.hcl", 1), Size: 10, Provider: "docker",
			Image: "ghcr.io/immutd/sampleapp:v2.1",
			Launch: Launch{
				Command:   []string{"/app/server"},
				Args:      []string{"-listen", ":8080", "-v"},
				Env:       map[string]string{"LOG_FORMAT": "json", "_DEBUG": "1", "GREETING": "hello world"},
				StopGrace: 30 * time.Second,
				Docker:    &DockerLaunch{Port: 9090, NetworkMode: "host", ReadOnly: true, MemoryBytes: 256 << 20, NanoCPUs: 500_000_000},
			},
			Health: defaultChecks(
				Check{Name: "ready", Kind: "http", Path: "/healthz?full=1", ExpectStatus: []int{200, 204},
					Interval: 5 * time.Second, Timeout: 5 * time.Second, HealthyThreshold: 2, UnhealthyThreshold: 5, StartupTimeout: 2 * time.Minute},
				Check{Name: "port", Kind: "tcp", Interval: 500 * time.Millisecond, Timeout: 250 * time.Millisecond,
					HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: 60 * time.Second},
			),
			Drift: Drift{Interval: time.Minute, IgnorePaths: []string{"logs/**", "*.pid", "tmp/**/cache-?", "data/[a-c]*"}, Orphans: "terminate"},
			Remediation: Remediation{Enabled: false, MaxUnhealthy: quantity.Count(4), MaxParallel: 2, Mode: "report",
				Rate: defaultRemediation.Rate, SecondaryRate: defaultRemediation.SecondaryRate, UnhealthyThreshold: &share25,
				StormCooldown: time.Minute, StormGuard: true, FlapThreshold: 3, FlapWindow: 10 * time.Minute, MaxLaunchFailures: 10},
			Rollout: Rollout{MaxSurge: quantity.Percent(25), MaxUnavailable: quantity.Percent(10), ProgressDeadline: 10 * time.Minute, OnFailure: "pause", Strategy: "rolling", Canary: quantity.Count(1)},
		}}},
		{"full_local.hcl", []*Fleet{{
			Name: "worker", Pos: pos("full_local.hcl", 1), Size: 4, Provider: "local",
			Image: abs(t, "testdata/images/sampleapp-v2"),
			Launch: Launch{
				Command:   []string{"bin/app", "worker"},
				Env:       map[string]string{"QUEUE": "jobs"},
				StopGrace: 10 * time.Second,
			},
			Health: defaultChecks(Check{Name: "port", Kind: "tcp", Interval: 2 * time.Second, Timeout: time.Second,
				HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: 10 * time.Second}),
			Drift: Drift{Interval: 10 * time.Second, Orphans: "ignore"},
			Remediation: Remediation{Enabled: true, MaxUnhealthy: quantity.Percent(100), MaxParallel: 1, Mode: "act",
				Report: []string{"drift_mutated", "orphan"}, Rate: quantity.Rate{N: 5, Per: 10 * time.Minute},
				SecondaryRate: quantity.Rate{N: 0, Per: time.Hour}, UnhealthyThreshold: &share40, StormCooldown: 5 * time.Minute,
				HealthyDelay: 30 * time.Second, FlapThreshold: 0, FlapWindow: time.Hour, MaxLaunchFailures: 3,
				Quarantine: &Quarantine{Max: 2, TTL: 12 * time.Hour, Reasons: []string{"unhealthy"}}},
			Rollout: Rollout{MaxSurge: quantity.Count(0), MaxUnavailable: quantity.Percent(50), ProgressDeadline: 5 * time.Minute, Bake: time.Minute, OnFailure: "revert", Strategy: "canary", Canary: quantity.Percent(50), PromoteAfter: 30 * time.Second,
				Checkpoints: []Quantity{quantity.Percent(50), quantity.Percent(75)}, CheckpointPause: time.Minute,
				Analysis: &Analysis{Prometheus: "http://127.0.0.1:9090", Interval: 5 * time.Second, Metrics: []AnalysisMetric{
					{Name: "errors", Query: `sum(rate(errors_total{image_digest="{{image_digest}}"}[1m]))`, Success: "result < 0.01", Failure: "result >= 0.05",
						Count: 3, FailureLimit: 1, ConsecutiveErrorLimit: 4, ConsecutiveSuccess: 2},
					{Name: "latency", Query: "histogram_quantile(0.99, rate(latency_bucket[1m]))", Success: "result < 0.5", ConsecutiveErrorLimit: 4, DryRun: true},
				}}},
		}}},
		{"several.hcl", []*Fleet{
			{
				Name: "alpha", Pos: pos("several.hcl", 11), Size: 0, Provider: "docker", Image: "nginx:1.27",
				Launch:      Launch{StopGrace: 10 * time.Second, Docker: &DockerLaunch{Port: 8080, NetworkMode: "bridge"}},
				Health:      defaultChecks(defaultTCP("port")),
				Drift:       defaultDrift,
				Remediation: defaultRemediation,
				Rollout:     Rollout{MaxSurge: quantity.Count(0), MaxUnavailable: quantity.Count(0), ProgressDeadline: 10 * time.Minute, OnFailure: "pause", Strategy: "rolling", Canary: quantity.Count(1)},
			},
			{
				Name: "m-1", Pos: pos("several.hcl", 25), Size: 1, Provider: "docker", Image: "localhost:5000/m1:latest",
				Launch:      Launch{StopGrace: 10 * time.Second, Docker: &DockerLaunch{Port: 8080, NetworkMode: "bridge", MemoryBytes: 8 << 20}},
				Health:      defaultChecks(defaultTCP("port")),
				Drift:       defaultDrift,
				Remediation: defaultRemediation,
				Rollout:     defaultRollout,
			},
			{
				Name: "zeta", Pos: pos("several.hcl", 2), Size: 1, Provider: "docker", Image: "nginx:1.27",
				Launch:      Launch{StopGrace: 10 * time.Second, Docker: &DockerLaunch{Port: 8080, NetworkMode: "bridge"}},
				Health:      defaultChecks(defaultTCP("port")),
				Drift:       defaultDrift,
				Remediation: defaultRemediation,
				Rollout:     defaultRollout,
			},
		}},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".hcl"), func(t *testing.T) {
			set, err := loadFleetFile(t, dir, tt.file)
			if err != nil {
				t.Fatalf("unexpected error:\n%v", err)
			}
			want := &FleetSet{Dir: dir, Fleets: tt.want}
			if !reflect.DeepEqual(set, want) {
				t.Errorf("decoded fleets differ\n--- got\n%s\n--- want\n%s", dump(set), dump(want))
			}
		})
	}
	// Every valid file is covered by the table.
	files, err := filepath.Glob(filepath.Join(dir, "*.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(tests) {
		t.Errorf("%d files in %s, %d in the table", len(files), dir, len(tests))
	}
}

func dump(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func TestLoadFleetsDirectory(t *testing.T) {
	set, err := LoadFleets("testdata/fleets.d")
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	if got, want := set.Names(), []string{"api", "batch", "web"}; !reflect.DeepEqual(got, want) {
		t.Errorf("fleets %v, want %v", got, want)
	}
	for i, f := range set.Fleets {
		if f.Name != set.Names()[i] {
			t.Errorf("Fleets[%d] is %q: not sorted by name", i, f.Name)
		}
	}
	web := set.Fleet("web")
	if web == nil || web.Image != abs(t, "testdata/images/sampleapp-v1") {
		t.Errorf("web image resolved to %+v, want the absolute bundle path", web)
	}
	if web.Pos != (Pos{File: "testdata/fleets.d/web.hcl", Line: 1, Column: 1}) {
		t.Errorf("web at %v", web.Pos)
	}
}

const dockerFleet = `fleet %q {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
}
`

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func fleetSrc(name string) string { return strings.Replace(dockerFleet, "%q", `"`+name+`"`, 1) }

func TestLoadFleetsSkipsNonFleetFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.hcl"), fleetSrc("web"))
	// Each of these would fail to parse if it were read.
	for _, name := range []string{".#web.hcl", "web.hcl~", ".web.hcl.swp", "notes.txt", "web.hcl.bak", ".hidden.hcl"} {
		writeFile(t, filepath.Join(dir, name), "this is { not a fleet")
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sub", "inner.hcl"), "not { read")
	if err := os.Symlink(filepath.Join(dir, "web.hcl"), filepath.Join(dir, "link.hcl.txt")); err != nil {
		t.Fatal(err)
	}
	set, err := LoadFleets(dir)
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	if got := set.Names(); !reflect.DeepEqual(got, []string{"web"}) {
		t.Errorf("fleets %v, want [web]", got)
	}
}

// TestLoadFleetsRejectsBrokenEntries: anything named *.hcl that is not a
// readable regular file within the size limit rejects the directory,
// with every such entry named, so that it can never count as a removed
// fleet. Nothing is read past the limit.
func TestLoadFleetsRejectsBrokenEntries(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.hcl"), fleetSrc("web"))
	if err := os.Mkdir(filepath.Join(dir, "dir.hcl"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.hcl"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "moved-away.hcl"), filepath.Join(dir, "dangling.hcl")); err != nil {
		t.Fatal(err)
	}
	// A symlink to a good file is fine.
	writeFile(t, filepath.Join(dir, "real-api"), fleetSrc("api"))
	if err := os.Symlink(filepath.Join(dir, "real-api"), filepath.Join(dir, "api.hcl")); err != nil {
		t.Fatal(err)
	}
	huge, err := os.Create(filepath.Join(dir, "huge.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := huge.Truncate(1 << 40); err != nil { // sparse: 1 TB that takes no disk
		t.Fatal(err)
	}
	huge.Close()
	_, err = LoadFleets(dir)
	var diags Diagnostics
	if !errors.As(err, &diags) {
		t.Fatalf("got %v, want Diagnostics", err)
	}
	want := []string{
		filepath.Join(dir, "dangling.hcl") + `: is a symlink to "` + filepath.Join(dir, "moved-away.hcl") + `", which does not exist: fix or remove the link (a fleet file that cannot be read never counts as a removed fleet)`,
		filepath.Join(dir, "dir.hcl") + ": is a directory, not a regular file: a fleet file must be a regular file or a symlink to one",
		filepath.Join(dir, "fifo.hcl") + ": is a named pipe (FIFO), not a regular file: a fleet file must be a regular file or a symlink to one",
		filepath.Join(dir, "huge.hcl") + ": is 1099511627776 bytes; a fleet file may have at most 1048576 (1 MiB)",
	}
	if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, name := range []string{"dangling.hcl", "dir.hcl", "fifo.hcl", "huge.hcl"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	set, err := LoadFleets(dir)
	if err != nil || !reflect.DeepEqual(set.Names(), []string{"api", "web"}) {
		t.Fatalf("after removing the broken entries: %v %v", set, err)
	}
}

// TestFleetFileErrorsAreBounded: binary garbage is refused at once, and
// however many errors a file has, the report holds a bounded number of
// bounded lines.
func TestFleetFileErrorsAreBounded(t *testing.T) {
	garbage := make([]byte, 300<<10)
	for i := range garbage {
		garbage[i] = byte(i*7 + i/13)
	}
	_, err := ParseFleetFiles("d", []File{{Name: "bin.hcl", Content: garbage}})
	if err == nil || err.Error() != "d/bin.hcl:1:1: not UTF-8 text (byte 0x80): a configuration file must be HCL text" && !strings.Contains(err.Error(), "control character") {
		t.Fatalf("binary file: %v", err)
	}
	// Text with an error on every line.
	var b strings.Builder
	for i := 0; i < 4000; i++ {
		fmt.Fprintf(&b, "attr_%d = %q\n", i, strings.Repeat("x", 200))
	}
	_, err = ParseFleetFiles("d", []File{{Name: "many.hcl", Content: []byte(b.String())}})
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) > maxDiagsPerFile+1 || !strings.Contains(lines[len(lines)-1], "and 3980 more errors") {
		t.Errorf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
	for _, l := range lines {
		if len(l) > maxDiagLen+200 {
			t.Errorf("line of %d bytes: %.200s", len(l), l)
		}
	}
}

func TestLoadFleetsEmptyAndMissing(t *testing.T) {
	dir := t.TempDir()
	set, err := LoadFleets(dir)
	if err != nil {
		t.Fatalf("empty directory: %v", err)
	}
	if set.Fleets == nil || len(set.Fleets) != 0 || set.Dir != dir {
		t.Errorf("empty directory gave %+v, want an empty set", set)
	}
	_, err = LoadFleets(filepath.Join(dir, "absent"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing directory: got %v, want an error wrapping fs.ErrNotExist", err)
	}
	var diags Diagnostics
	if errors.As(err, &diags) {
		t.Errorf("missing directory reported as Diagnostics: %v", err)
	}
}
