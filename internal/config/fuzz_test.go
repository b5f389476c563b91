package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// addSeeds adds every file matching the patterns to the fuzz corpus.
func addSeeds(f *testing.F, patterns ...string) {
	for _, pattern := range patterns {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			src, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(src)
		}
	}
}

// checkOutcome asserts that a load either succeeded or failed with
// well-formed Diagnostics.
func checkOutcome(t *testing.T, ok bool, err error, file string) {
	if ok == (err != nil) {
		t.Fatalf("result and error disagree: ok=%v err=%v", ok, err)
	}
	if err == nil {
		return
	}
	var diags Diagnostics
	if !errors.As(err, &diags) || len(diags) == 0 {
		t.Fatalf("error is not Diagnostics: %T %v", err, err)
	}
	for _, d := range diags {
		if d.Pos.File != file || d.Pos.Line < 1 || d.Pos.Column < 1 || d.Message == "" {
			t.Fatalf("malformed diagnostic %+v", d)
		}
	}
	_ = err.Error()
}

func FuzzParseFleetFile(f *testing.F) {
	addSeeds(f, "testdata/valid/*.hcl", "testdata/invalid/*.hcl", "testdata/invalid/*/*.hcl")
	f.Add([]byte(""))
	f.Add([]byte("fleet \"x\" {\n size = 1e400\n provider = \"docker\"\n image = \"a:b\"\n health { tcp \"\" {} }\n launch { env = { \"\" = null } \n docker { memory = \"99999999999999999999GiB\"\n cpus = 1e-12 } }\n}\n"))
	f.Add([]byte("fleet \"x\" \"y\" { rollout { max_surge = \"-0%\" } }\nfleet {}\n"))
	const dir = "testdata/valid" // so that relative local images resolve
	f.Fuzz(func(t *testing.T, src []byte) {
		set, err := ParseFleetFiles(dir, []File{{Name: "fuzz.hcl", Content: src}})
		checkOutcome(t, set != nil, err, filepath.Join(dir, "fuzz.hcl"))
		if set == nil {
			return
		}
		for i, fl := range set.Fleets {
			if !fleetNameRE.MatchString(fl.Name) || (i > 0 && set.Fleets[i-1].Name >= fl.Name) {
				t.Fatalf("fleet names not valid and sorted: %v", set.Names())
			}
			if len(fl.Health.Checks) == 0 || fl.Size < 0 || fl.Size > maxFleetSize {
				t.Fatalf("invalid fleet accepted: %+v", fl)
			}
		}
	})
}

func FuzzParseAgent(f *testing.F) {
	addSeeds(f, "testdata/agent/valid/*.hcl", "testdata/agent/invalid/*.hcl")
	f.Fuzz(func(t *testing.T, src []byte) {
		a, err := parseAgent("agent.hcl", "/etc/immutd/agent.hcl", src, fixedEnv(""))
		checkOutcome(t, a != nil, err, "agent.hcl")
	})
}
