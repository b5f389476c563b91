package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// failoverKills is the number of leader kills BenchmarkLeaderFailover does.
const failoverKills = 24

// BenchmarkLeaderFailover: three agents with default timing keep a fleet
// of 10 probed instances; the leader is SIGKILLed repeatedly. Measured:
// time from the SIGKILL to the new leader's first completed reconcile
// pass (its leader_ready event). Targets: p50 <= 500ms, p99 <= 1.5s.
// Baseline in the same run: the raft heartbeat timeout (200ms), the
// earliest moment a follower may start an election.
func BenchmarkLeaderFailover(b *testing.B) {
	for b.Loop() {
		c := newCluster(b, 3, "")
		c.writeFleet("web.hcl", fleetFile("web", 10, "v1", ""))
		c.start()
		c.waitHealthy("web", 10)
		var took []time.Duration
		for k := 0; k < failoverKills; k++ {
			l := c.leader()
			after := uint64(0)
			for _, ev := range c.agents[l].events() {
				after = max(after, ev.Seq)
			}
			time.Sleep(time.Duration(300+k*37%400) * time.Millisecond)
			t0 := time.Now()
			c.agents[l].kill9()
			nl := c.leader(l)
			ev := c.agents[nl].waitEvent(after, 30*time.Second, func(ev state.Event) bool {
				return ev.Action == "leader_ready" && ev.Node == fmt.Sprintf("agent-%d", nl+1)
			})
			took = append(took, ev.Time.Sub(t0))
			c.agents[l].launch()
			c.agents[l].waitReady(30 * time.Second)
			c.waitHealthy("web", 10)
		}
		report(b, "failover", took)
		b.ReportMetric(percentile(took, 0.99).Seconds()*1000, "failover_p99_ms")
		b.ReportMetric(200, "heartbeat_timeout_ms")
		b.Logf("failover samples: %v", took)
	}
}

// BenchmarkSoakNoSpuriousElections runs three agents probing 30 instances
// every 300ms for IMMUTD_SOAK (default 10m) and counts leader changes;
// the target is none.
func BenchmarkSoakNoSpuriousElections(b *testing.B) {
	d := 10 * time.Minute
	if s := os.Getenv("IMMUTD_SOAK"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		c := newCluster(b, 3, "")
		c.writeFleet("web.hcl", fleetFile("web", 30, "v1", ""))
		c.start()
		c.waitHealthy("web", 30)
		l := c.leader()
		start := time.Now()
		term := c.agents[l].status().Term
		probes0 := probeCount(b, c)
		for time.Since(start) < d {
			time.Sleep(5 * time.Second)
		}
		st := c.agents[l].status()
		probes := probeCount(b, c) - probes0
		changes := 0
		for _, ev := range c.agents[l].events() {
			if ev.Action == "leader_ready" && ev.Time.After(start) {
				changes++
			}
		}
		b.ReportMetric(float64(changes), "leader_changes")
		b.ReportMetric(float64(st.Term-term), "term_increase")
		b.ReportMetric(probes/d.Seconds(), "probes/s")
		b.Logf("soak %v: %d leader changes, term %d -> %d, %.0f probes/s across 3 agents", d, changes, term, st.Term, probes/d.Seconds())
	}
}

// probeCount sums immutd_probe_duration_seconds_count over the agents.
func probeCount(b *testing.B, c *cluster) float64 {
	total := 0.0
	for _, e := range c.agents {
		for _, line := range strings.Split(get(b, "http://"+e.httpAddr+"/metrics"), "\n") {
			var kind, result string
			var v float64
			if n, _ := fmt.Sscanf(line, "immutd_probe_duration_seconds_count{kind=%q,result=%q} %g", &kind, &result, &v); n == 3 {
				total += v
			}
		}
	}
	return total
}
