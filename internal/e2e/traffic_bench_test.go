package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic"
	"github.com/immutd/immutd/internal/traffic/haproxy"
	"github.com/immutd/immutd/internal/traffic/haproxy/haproxytest"
)

// BenchmarkTrafficRollout rolls a 3-instance local fleet behind a real
// HAProxy from v1 to v2 under a bounded load, three times with the
// traffic gate and three times without it, in one run.
//
// Gate on: the fleet has a traffic block (min_ready 1s, drain_delay 1s,
// HAProxy backend). Gate off (the baseline): the fleet has none, and the
// test plays the service discovery a load balancer would otherwise rely
// on: it polls immutd's status every 200ms and adds each healthy instance
// to HAProxy, and removes each instance that is no longer listed — after
// the fact, as discovery does.
//
// Reported: failed requests per rollout for both, and the time each
// replacement spends in the gate (admission confirmed by HAProxy, and the
// drain until connections ended or drain_delay, with removal), from the
// event log.
func BenchmarkTrafficRollout(b *testing.B) {
	for b.Loop() {
		const rounds = 3
		var gateFailed, gateOK, baseFailed, baseOK int64
		var admits, drains, rollouts, baseRollouts []time.Duration
		for r := 0; r < rounds; r++ {
			ok, failed, a, d, took := trafficRollout(b, true)
			gateOK, gateFailed = gateOK+ok, gateFailed+failed
			admits, drains, rollouts = append(admits, a...), append(drains, d...), append(rollouts, took)
			ok, failed, _, _, took = trafficRollout(b, false)
			baseOK, baseFailed = baseOK+ok, baseFailed+failed
			baseRollouts = append(baseRollouts, took)
		}
		b.Logf("gate on:  %d rollouts, %d requests, %d failed (%.1f per rollout)", rounds, gateOK+gateFailed, gateFailed, float64(gateFailed)/rounds)
		b.Logf("gate off: %d rollouts, %d requests, %d failed (%.1f per rollout)", rounds, baseOK+baseFailed, baseFailed, float64(baseFailed)/rounds)
		report(b, "admit", admits)
		report(b, "drain", drains)
		report(b, "rollout", rollouts)
		report(b, "rollout_nogate", baseRollouts)
		b.ReportMetric(float64(gateFailed)/rounds, "failed/rollout-gate")
		b.ReportMetric(float64(baseFailed)/rounds, "failed/rollout-nogate")
	}
}

// trafficRollout runs one rollout under load and returns the requests that
// succeeded and failed, the admission and drain times of the gate (gate
// on only), and how long the rollout took.
func trafficRollout(b *testing.B, gate bool) (ok, failed int64, admits, drains []time.Duration, took time.Duration) {
	b.Helper()
	h := haproxytest.Start(b, haproxytest.Options{})
	e := newEnv(b, envOpts{})
	e.start()
	block := ""
	if gate {
		block = fmt.Sprintf(`  traffic {
    min_ready   = "1s"
    drain_delay = "1s"
    haproxy "edge" {
      socket  = %q
      backend = "web"
    }
  }
`, h.Socket)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !gate {
		be, err := haproxy.New(haproxy.Config{Socket: h.Socket, Backend: "web"}, zap.NewNop())
		must(b, err)
		done := make(chan struct{})
		go discover(ctx, e, be, done)
		defer func() { cancel(); <-done }()
	}
	e.writeFleet("web.hcl", fleetFile("web", 3, "v1", block))
	v1 := behind(b, e, h, 3, "")
	l := startLoad(b, h.Addr, 4)
	after := e.lastSeq()
	start := time.Now()
	e.writeFleet("web.hcl", fleetFile("web", 3, "v2", block))
	e.waitFor("the new image committed", time.Minute, func() (bool, string) {
		f := e.fleet("web")
		return f.ImageDigest != "" && !strings.HasSuffix(f.ImageDigest, v1), f.ImageDigest
	})
	behind(b, e, h, 3, shortDigest(e.fleet("web").ImageDigest))
	took = time.Since(start)
	ok, failed, _, _ = l.stop()
	planned := map[string]time.Time{}
	for _, ev := range e.eventsAfter(after) {
		switch ev.Action {
		case state.ActionAdmitPlanned, state.ActionDrainPlanned:
			planned[ev.OpID] = ev.Time
		case state.ActionAdmitted:
			admits = append(admits, ev.Time.Sub(planned[ev.OpID]))
		case state.ActionDrained:
			drains = append(drains, ev.Time.Sub(planned[ev.OpID]))
		}
	}
	return ok, failed, admits, drains, took
}

// behind waits until HAProxy has exactly n ready immutd servers and the
// fleet n healthy instances up to date with digestPrefix; it returns the
// fleet's digest.
func behind(b *testing.B, e *env, h *haproxytest.Instance, n int, digestPrefix string) string {
	b.Helper()
	var f api.Fleet
	e.waitFor("the fleet behind HAProxy", 2*time.Minute, func() (bool, string) {
		f = e.fleet("web")
		up := 0
		for _, in := range f.Instances {
			if in.State == "healthy" && in.UpToDate && strings.HasPrefix(strings.TrimPrefix(in.ImageDigest, "sha256:"), digestPrefix) {
				up++
			}
		}
		srv := servers(b, h)
		ready := 0
		for _, s := range srv {
			if strings.HasSuffix(s, " ready") {
				ready++
			}
		}
		return up == n && len(f.Instances) == n && ready == n && len(srv) == n, fmt.Sprintf("%s; haproxy %v", describe(f), srv)
	})
	return digestOf(f)
}

// discover is the baseline's service discovery: every 200ms it adds the
// healthy instances immutd lists to HAProxy and removes the ones it no
// longer lists.
func discover(ctx context.Context, e *env, be *haproxy.Backend, done chan<- struct{}) {
	defer close(done)
	in := map[string]traffic.Member{}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := e.trystatus()
		if err != nil {
			continue
		}
		f, _ := fleetOf(st, "web")
		listed := map[string]bool{}
		for _, x := range f.Instances {
			listed[x.ID] = true
			if _, ok := in[x.ID]; !ok && x.State == "healthy" {
				m := traffic.Member{Fleet: "web", InstanceID: x.ID, Address: x.Address}
				if be.Admit(ctx, m) == nil {
					in[x.ID] = m
				}
			}
		}
		for id, m := range in {
			if !listed[id] && be.Remove(ctx, m) == nil {
				delete(in, id)
			}
		}
	}
}
