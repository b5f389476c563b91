package reconcile

import "testing"

func TestInLaunchStreak(t *testing.T) {
	short := FleetStatus{Desired: 2, States: map[InstanceState]int{StateHealthy: 1}}
	full := FleetStatus{Desired: 2, States: map[InstanceState]int{StateHealthy: 2}}
	draining := FleetStatus{Desired: 2, Draining: true}
	for _, c := range []struct {
		st       FleetStatus
		failures int
		want     bool
	}{
		{short, 0, false}, {short, 1, false}, // the first failure is retried at once
		{short, 2, true}, {short, 9, true},
		{full, 5, false}, {draining, 5, false},
	} {
		if got := InLaunchStreak(c.st, c.failures); got != c.want {
			t.Errorf("InLaunchStreak(%+v, %d) = %v, want %v", c.st, c.failures, got, c.want)
		}
	}
}
