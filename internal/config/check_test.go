package config

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestChecksValid decodes every kind of check, with its defaults and
// with every setting spelled out.
func TestChecksValid(t *testing.T) {
	set, err := loadFleetFile(t, "testdata/checks", "valid.hcl")
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	// Spelled out rather than built from the default functions, so that a
	// changed default fails here.
	common := func(name, kind string) Check {
		return Check{Name: name, Kind: kind, Interval: 2 * time.Second, Timeout: time.Second,
			HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: 60 * time.Second}
	}
	users := common("users", "grpc")
	users.Service = "users.v1.Users"
	users.Interval, users.Timeout, users.StartupTimeout = 5*time.Second, 2*time.Second, 2*time.Minute
	users.HealthyThreshold, users.UnhealthyThreshold = 2, 4
	minimal := common("minimal", "exec")
	minimal.Command = []string{"/bin/true"}
	script := common("script", "exec")
	script.Command = []string{"/bin/true", "--port", "5432", ""}
	script.Interval, script.Timeout = 100*time.Millisecond, 100*time.Millisecond
	ready := common("ready", "http")
	ready.Path, ready.ExpectStatus = "/", []int{200}
	want := []Check{common("whole", "grpc"), users, minimal, script, ready, common("port", "tcp")}

	if len(set.Fleets) != 1 {
		t.Fatalf("%d fleets", len(set.Fleets))
	}
	if got := set.Fleets[0].Health.Checks; !reflect.DeepEqual(got, want) {
		t.Errorf("checks differ\n--- got\n%s\n--- want\n%s", dump(got), dump(want))
	}
}

// TestCheckEncodingOfOldKinds: http and tcp checks encode as before the
// grpc and exec settings existed.
func TestCheckEncodingOfOldKinds(t *testing.T) {
	set, err := loadFleetFile(t, "testdata/checks", "valid.hcl")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range set.Fleets[0].Health.Checks {
		if c.Kind != "http" && c.Kind != "tcp" {
			continue
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if s := string(b); strings.Contains(s, `"service"`) || strings.Contains(s, `"command"`) {
			t.Errorf("%s check encodes grpc or exec settings: %s", c.Kind, s)
		}
	}
}
