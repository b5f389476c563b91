package main

import (
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
)

func TestStatusShowsTraffic(t *testing.T) {
	var b strings.Builder
	renderInstances(&b, []api.Fleet{{Name: "web", Instances: []api.Instance{
		{ID: "web-1", Fleet: "web", State: "healthy", UpToDate: true, Traffic: "admitted"},
		{ID: "web-2", Fleet: "web", State: "draining", UpToDate: true, Traffic: "draining", TrafficConnections: 3, Intent: "drain: drift_image"},
		{ID: "web-3", Fleet: "web", State: "healthy", UpToDate: true},
	}}}, time.Now())
	out := b.String()
	for _, want := range []string{"traffic: admitted", "traffic: draining, 3 connections left; drain: drift_image"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if line := strings.Split(out, "\n")[3]; strings.Contains(line, "traffic") {
		t.Errorf("an instance of a fleet without a gate shows traffic: %q", line)
	}
}
