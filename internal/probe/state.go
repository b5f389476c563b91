package probe

import (
	"time"
)

// State is the health state of one check of an instance, or the aggregate
// state of the instance.
type State string

const (
	// Starting: the instance is new (or its checks were reset) and has
	// not passed yet; failures do not count against it.
	Starting State = "starting"
	// Healthy: the check passed healthy_threshold times in a row and has
	// not failed unhealthy_threshold times in a row since.
	Healthy State = "healthy"
	// Unhealthy: the check was healthy once and then failed
	// unhealthy_threshold times in a row.
	Unhealthy State = "unhealthy"
	// NeverHealthy: the startup window expired while the check was
	// failing and it never passed.
	NeverHealthy State = "never_healthy"
)

// Result is one completed probe of one check.
type Result struct {
	Check    string        `json:"check"`
	Kind     string        `json:"kind"`
	At       time.Time     `json:"at"` // when the probe started
	Duration time.Duration `json:"duration"`
	OK       bool          `json:"ok"`
	// Detail is short: "status 200", "connected", "connection refused",
	// "timeout after 1s".
	Detail string `json:"detail"`
}

// CheckStatus is the state of one check of one instance.
type CheckStatus struct {
	Kind                 string    `json:"kind"`
	State                State     `json:"state"`
	Since                time.Time `json:"since"` // when State last changed
	ConsecutiveSuccesses int       `json:"consecutive_successes"`
	ConsecutiveFailures  int       `json:"consecutive_failures"`
	// Last is the most recent result; zero until the first probe completes.
	Last Result `json:"last,omitzero"`
	// LastFailure is the most recent failed result; zero if none.
	LastFailure Result `json:"last_failure,omitzero"`
}

// thresholds are the parts of a check that drive its state machine.
type thresholds struct {
	healthy        int           // consecutive successes to become healthy
	unhealthy      int           // consecutive failures to turn healthy into unhealthy
	startupTimeout time.Duration // length of the startup window
}

// machine is the state machine of one check of one instance. It is pure:
// it never reads a clock, every input carries its time, and the same
// inputs always give the same states.
//
// Transitions:
//
//	starting      -> healthy        healthy consecutive successes
//	starting      -> never_healthy  startup window over, never passed, and the latest result failed
//	healthy       -> unhealthy      unhealthy consecutive failures
//	unhealthy     -> healthy        healthy consecutive successes
//	never_healthy -> healthy        healthy consecutive successes (late start)
//
// Failures while starting never lead to unhealthy. The startup window
// alone never condemns a check: never_healthy also needs the latest
// result to be a failure, so a check in the middle of a run of successes
// when the window closes gets to finish it, and a check that has not been
// probed yet (say, a target handed over with an old Since) is not judged
// before its first result.
type machine struct {
	th    thresholds
	start time.Time // start of the startup window
	st    CheckStatus
}

func newMachine(kind string, th thresholds, start time.Time) machine {
	return machine{
		th:    th,
		start: start,
		st:    CheckStatus{Kind: kind, State: Starting, Since: start},
	}
}

// observe applies one result, judged at now, and reports whether the
// state changed.
func (m *machine) observe(r Result, now time.Time) bool {
	before := m.st.State
	m.st.Last = r
	if r.OK {
		m.st.ConsecutiveSuccesses++
		m.st.ConsecutiveFailures = 0
		if m.st.State != Healthy && m.st.ConsecutiveSuccesses >= m.th.healthy {
			m.set(Healthy, now)
		}
		return m.st.State != before
	}
	m.st.ConsecutiveFailures++
	m.st.ConsecutiveSuccesses = 0
	m.st.LastFailure = r
	switch m.st.State {
	case Healthy:
		if m.st.ConsecutiveFailures >= m.th.unhealthy {
			m.set(Unhealthy, now)
		}
	case Starting:
		m.expire(now)
	}
	return m.st.State != before
}

// expire ends the startup window if it is over at now, and reports
// whether the state changed.
func (m *machine) expire(now time.Time) bool {
	if m.st.State != Starting || m.st.ConsecutiveFailures == 0 {
		return false
	}
	if now.Sub(m.start) < m.th.startupTimeout {
		return false
	}
	m.set(NeverHealthy, now)
	return true
}

// deadline is when the startup window closes.
func (m *machine) deadline() time.Time { return m.start.Add(m.th.startupTimeout) }

func (m *machine) set(s State, now time.Time) {
	m.st.State = s
	m.st.Since = now
}

// aggregate is the state of an instance given the states of its checks:
// never_healthy if any check is, else unhealthy if any check is, else
// starting if any check is, else healthy (also when there are no checks).
func aggregate(states ...State) State {
	out := Healthy
	for _, s := range states {
		out = worse(out, s)
	}
	return out
}

// worse returns the one of a and b that weighs more in the aggregate.
func worse(a, b State) State {
	if severity(b) > severity(a) {
		return b
	}
	return a
}

func severity(s State) int {
	switch s {
	case NeverHealthy:
		return 3
	case Unhealthy:
		return 2
	case Starting:
		return 1
	}
	return 0
}
