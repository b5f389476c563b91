package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// auditIntents checks the event log: every planned intent finished
// exactly once, and no instance id was launched twice.
func auditIntents(t testing.TB, evs []state.Event) (planned int) {
	t.Helper()
	plannedOps := map[string]string{}
	finished := map[string][]string{}
	launched := map[string]int{}
	for _, ev := range evs {
		switch ev.Action {
		case "launch_planned", "terminate_planned":
			if _, dup := plannedOps[ev.OpID]; dup {
				t.Errorf("op %s planned twice", ev.OpID)
			}
			plannedOps[ev.OpID] = string(ev.Action)
		case "launched", "launch_failed", "launch_abandoned", "terminated", "terminate_failed", "terminate_abandoned":
			finished[ev.OpID] = append(finished[ev.OpID], string(ev.Action))
		}
		if ev.Action == "launched" {
			launched[ev.InstanceID]++
		}
	}
	for op, kind := range plannedOps {
		if n := len(finished[op]); n != 1 {
			t.Errorf("intent %s (%s) finished %d times: %v", op, kind, n, finished[op])
		}
	}
	for op := range finished {
		if _, ok := plannedOps[op]; !ok && op != "" {
			t.Errorf("intent %s finished but never planned", op)
		}
	}
	for id, n := range launched {
		if n > 1 {
			t.Errorf("instance %s launched %d times", id, n)
		}
	}
	return len(plannedOps)
}

// sampler counts instance processes under dir every 20ms and records the
// maximum, until stopped.
type sampler struct {
	stop chan struct{}
	done chan struct{}
	max  atomic.Int64
}

func sampleProcesses(dir string) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			n := int64(len(processesUnder(dir)))
			if n > s.max.Load() {
				s.max.Store(n)
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) finish() int {
	close(s.stop)
	<-s.done
	return int(s.max.Load())
}

// TestClusterLeaderKilledTenTimesDuringRollout kills the leader with
// SIGKILL ten times while a rolling replacement runs, restarting it each
// time: never more instances than size+max_surge, no instance launched
// twice, every intent finished exactly once, and the fleet converges.
func TestClusterLeaderKilledTenTimesDuringRollout(t *testing.T) {
	c := newCluster(t, 3, "")
	c.writeFleet("web.hcl", fleetFile("web", 3, "v1", ""))
	c.start()
	c.waitHealthy("web", 3)

	s := sampleProcesses(c.localDir)
	// Roll v1 -> v2 -> v1 ... so there is always a rollout to interrupt.
	versions := []string{"v2", "v1"}
	for kill := 0; kill < 10; kill++ {
		if kill%4 == 0 {
			c.writeFleet("web.hcl", fleetFile("web", 3, versions[(kill/4)%2], ""))
		}
		time.Sleep(time.Duration(150+kill*70) * time.Millisecond)
		l := c.leader()
		c.agents[l].kill9()
		c.leader(l)
		c.agents[l].launch()
		c.agents[l].waitReady(30 * time.Second)
	}
	f := c.waitHealthy("web", 3)
	maxProcs := s.finish()
	if maxProcs > 4 {
		t.Fatalf("at one moment %d instance processes existed, more than size 3 + max_surge 1", maxProcs)
	}
	time.Sleep(2 * time.Second)
	if n := len(processesUnder(c.localDir)); n != 3 {
		t.Fatalf("%d instance processes after convergence, want 3: %s", n, describe(f))
	}
	evs := c.agents[c.leader()].events()
	planned := auditIntents(t, evs)
	ready := 0
	for _, ev := range evs {
		if ev.Action == "leader_ready" {
			ready++
		}
	}
	t.Logf("max %d processes, %d intents audited, %d leader terms became ready", maxProcs, planned, ready)
	if ready < 10 {
		t.Fatalf("only %d leader_ready events for 10 leader kills", ready)
	}
}

// TestClusterAgentCutOffFromInstancesKillsNothing cuts one agent's probes
// off (fault injection), first a follower, then the leader: the instances
// are seen failing by that agent only, and nothing is terminated.
func TestClusterAgentCutOffFromInstancesKillsNothing(t *testing.T) {
	c := newCluster(t, 3, "")
	c.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	c.start()
	before := ids(c.waitHealthy("web", 2))
	for _, which := range []string{"follower", "leader"} {
		l := c.leader()
		victim := (l + 1) % 3
		if which == "leader" {
			victim = l
		}
		fault := filepath.Join(c.agents[victim].dataDir, "faults", "probes-cut")
		if err := os.MkdirAll(filepath.Dir(fault), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fault, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("agent-%d", victim+1)
		// The cluster sees that agent's failures, and does nothing.
		c.agents[l].waitFor("the cut-off agent's failures to reach the leader", 15*time.Second, func() (bool, string) {
			st, err := c.agents[l].consistentStatus()
			if err != nil {
				return false, err.Error()
			}
			for _, f := range st.Fleets {
				for _, in := range f.Instances {
					if slices.Contains(in.FailingOn, name) {
						return true, ""
					}
				}
			}
			return false, describe(st.Fleets[0])
		})
		time.Sleep(6 * time.Second) // well past 3 x 300ms probes
		st, err := c.agents[l].consistentStatus()
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(st.Fleets[0]); len(got) != 2 || !got[keys(before)[0]] || !got[keys(before)[1]] {
			t.Fatalf("%s cut off: instances changed: before %v now %s", which, keys(before), describe(st.Fleets[0]))
		}
		for _, in := range st.Fleets[0].Instances {
			if in.State != "healthy" {
				t.Fatalf("%s cut off: instance %s judged %s (failing on %v, healthy on %v)", which, in.ID, in.State, in.FailingOn, in.HealthyOn)
			}
		}
		for _, ev := range c.agents[l].events() {
			if ev.Action == "terminate_planned" {
				t.Fatalf("%s cut off: a termination was planned: %+v", which, ev)
			}
		}
		if err := os.Remove(fault); err != nil {
			t.Fatal(err)
		}
		// Before the next agent is cut off, the leader must hear that this
		// one sees the instances pass again: otherwise its last failing
		// report and the next agent's failures make a majority.
		c.agents[l].waitFor("the agent's recovery to reach the leader", 30*time.Second, func() (bool, string) {
			st, err := c.agents[l].consistentStatus()
			if err != nil {
				return false, err.Error()
			}
			for _, in := range st.Fleets[0].Instances {
				if slices.Contains(in.FailingOn, name) || !slices.Contains(in.HealthyOn, name) {
					return false, fmt.Sprintf("%s failing on %v, healthy on %v", in.ID, in.FailingOn, in.HealthyOn)
				}
			}
			return true, ""
		})
	}
	// A real failure seen by every agent is still remediated.
	victim := c.waitHealthy("web", 2).Instances[0]
	resp, err := http.Post("http://"+victim.Address+"/fail", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.agents[c.leader()].waitHealthyConsistent("web", 2, 60*time.Second, victim.ID)
	ev := findEvent(c.agents[c.leader()].events(), "terminated", victim.ID)
	if ev == nil || ev.Reason != "unhealthy" {
		t.Fatalf("a failure seen by all agents was not remediated: %+v", ev)
	}
}

// TestClusterWithoutQuorumChangesNothing stops two of three agents: the
// survivor makes no change and says so; once they are back the fleet
// converges.
func TestClusterWithoutQuorumChangesNothing(t *testing.T) {
	c := newCluster(t, 3, "")
	c.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	c.start()
	f := c.waitHealthy("web", 2)
	l := c.leader()
	a, b := (l+1)%3, (l+2)%3
	c.agents[a].stop()
	c.agents[b].stop()
	survivor := c.agents[l]
	survivor.waitFor("the survivor to see no leader", 15*time.Second, func() (bool, string) {
		st, err := survivor.trystatus()
		return err == nil && st.Leader == "" && !st.IsLeader, fmt.Sprintf("%+v", err)
	})
	gen := survivor.status().Generation
	evsBefore := len(survivor.events())
	// Give it something to fix: kill an instance, and edit the fleet file.
	_ = syscall.Kill(localPID(t, f.Instances[0]), syscall.SIGKILL)
	c.writeFleet("web.hcl", fleetFile("web", 3, "v1", ""))
	time.Sleep(5 * time.Second)
	st := survivor.status()
	if st.Generation != gen || len(survivor.events()) != evsBefore {
		t.Fatalf("the survivor changed state without quorum: generation %d -> %d", gen, st.Generation)
	}
	if n := len(processesUnder(c.localDir)); n != 1 {
		t.Fatalf("%d instance processes without quorum, want the 1 left alive", n)
	}
	out, _ := runCLI("status", "-addr", survivor.httpAddr)
	if !strings.Contains(out, "NO LEADER") {
		t.Fatalf("status does not say there is no quorum:\n%s", out)
	}
	resp, err := http.Get("http://" + survivor.httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz without quorum: %d", resp.StatusCode)
	}
	if m := get(t, "http://"+survivor.httpAddr+"/metrics"); !strings.Contains(m, `immutd_remediation_blocked{cause="no_quorum",fleet="web"} 1`) {
		t.Fatal("no_quorum is not exported")
	}
	c.agents[a].launch()
	c.agents[b].launch()
	c.waitHealthy("web", 3)
	auditIntents(t, c.agents[c.leader()].events())
}

// TestClusterRefusesAgentWithUntrustedCertificate starts a fourth agent
// whose certificate comes from another CA: it never becomes a member.
func TestClusterRefusesAgentWithUntrustedCertificate(t *testing.T) {
	c := newCluster(t, 3, "")
	c.start()
	l := c.leader()
	rogueTLS := t.TempDir()
	makeCerts(t, rogueTLS, "rogue")
	rogue := newEnv(t, envOpts{name: "rogue", cluster: clusterBlock(rogueTLS, "rogue", c.raftAddrs, 3)})
	rogue.launch()
	time.Sleep(5 * time.Second)
	ms, err := c.agents[l].client.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("members after a rogue join attempt: %+v", ms)
	}
	for _, m := range ms {
		if m.Name == "rogue" || m.Address == rogue.raftAddr {
			t.Fatalf("rogue agent became a member: %+v", m)
		}
	}
	logs, _ := os.ReadFile(filepath.Join(c.agents[l].dir, "agent.log"))
	if !strings.Contains(string(logs), "connection rejected") {
		t.Fatal("the leader did not log the rejected connection")
	}
	out, code := runCLI("cluster", "members", "-addr", c.agents[(l+1)%3].httpAddr)
	if code != 0 || strings.Count(out, "agent-") != 3 {
		t.Fatalf("cluster members via a follower: exit %d\n%s", code, out)
	}
}

// TestClusterMembershipCommands: remove a member, let it rejoin through
// `immutd cluster join` (after wiping its state, as a replaced machine
// would), and leave.
func TestClusterMembershipCommands(t *testing.T) {
	c := newCluster(t, 3, "")
	c.start()
	l := c.leader()
	victim := (l + 1) % 3
	name := fmt.Sprintf("agent-%d", victim+1)
	c.agents[victim].kill9()
	if out, code := c.agents[l].cli("cluster", "remove", name); code != 0 {
		t.Fatalf("remove: %s", out)
	}
	if ms, _ := c.agents[l].client.Members(context.Background()); len(ms) != 2 {
		t.Fatalf("members after remove: %+v", ms)
	}
	// The machine comes back wiped: new identity, no raft state. It must
	// not bootstrap a second cluster; it joins the existing one.
	if err := os.RemoveAll(c.agents[victim].dataDir); err != nil {
		t.Fatal(err)
	}
	c.agents[victim].launch()
	c.agents[victim].waitReady(60 * time.Second)
	c.agents[l].waitFor("the wiped agent to rejoin and be promoted", 60*time.Second, func() (bool, string) {
		ms, err := c.agents[l].client.Members(context.Background())
		if err != nil {
			return false, err.Error()
		}
		voters := 0
		for _, m := range ms {
			if m.Suffrage == "voter" {
				voters++
			}
		}
		return len(ms) == 3 && voters == 3, fmt.Sprintf("%+v", ms)
	})
	st := c.agents[victim].status()
	if st.Leader == "" || st.Generation != c.agents[l].status().Generation {
		t.Fatalf("rejoined agent does not follow the cluster: %+v", st)
	}
	// Graceful leave of a follower.
	leaver := (l + 2) % 3
	if out, code := c.agents[leaver].cli("cluster", "leave"); code != 0 {
		t.Fatalf("leave: %s", out)
	}
	c.agents[l].waitFor("the leaver to be gone", 20*time.Second, func() (bool, string) {
		ms, err := c.agents[l].client.Members(context.Background())
		return err == nil && len(ms) == 2, fmt.Sprintf("%+v %v", ms, err)
	})
	done := make(chan struct{})
	go func() { c.agents[leaver].cmd.Wait(); close(done) }()
	select {
	case <-done:
		c.agents[leaver].cmd = nil
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop after leaving")
	}
}

// TestClusterDivergentFleetDirsDoNotFlipFlop gives each agent its own
// fleets directory. An edit on a follower is forwarded and committed; the
// agents whose files now differ report it, and repeated leader changes
// never bring their older files back.
func TestClusterDivergentFleetDirsDoNotFlipFlop(t *testing.T) {
	c := newClusterOpts(t, 3, "", true)
	for _, e := range c.agents {
		e.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	}
	c.start()
	c.waitHealthy("web", 2)
	l := c.leader()
	f := (l + 1) % 3
	c.agents[f].writeFleet("web.hcl", fleetFile("web", 3, "v1", ""))
	c.waitHealthy("web", 3)
	gen := c.agents[l].status().Generation
	for i, e := range c.agents {
		st := e.status()
		if want := i != f; st.Diverged != want {
			t.Fatalf("agent %d diverged=%v, want %v (committed from %s)", i, st.Diverged, want, st.SourceNode)
		}
	}
	out, _ := runCLI("status", "-addr", c.agents[l].httpAddr)
	if !strings.Contains(out, "fleet files differ") {
		t.Fatalf("status does not report the divergence:\n%s", out)
	}
	for k := 0; k < 3; k++ {
		l = c.leader()
		c.agents[l].kill9()
		c.leader(l)
		c.agents[l].launch()
		c.agents[l].waitReady(30 * time.Second)
	}
	l = c.leader()
	time.Sleep(2 * time.Second)
	st, err := c.agents[l].consistentStatus()
	if err != nil {
		t.Fatal(err)
	}
	if st.Generation != gen || st.Fleets[0].Size != 3 {
		dumpDesiredEvents(t, c.agents[l])
		t.Fatalf("desired state flip-flopped after leader changes: generation %d -> %d, size %d", gen, st.Generation, st.Fleets[0].Size)
	}
}

func dumpDesiredEvents(t *testing.T, e *env) {
	for _, ev := range e.events() {
		if strings.HasPrefix(string(ev.Action), "desired") || strings.HasPrefix(string(ev.Action), "fleet_") {
			t.Logf("%s %s %s %s %v", ev.Time.Format("15:04:05.000"), ev.Node, ev.Action, ev.Reason, ev.Evidence)
		}
	}
}

// TestClusterDockerLeaderKilledTenTimesDuringRollout is the leader-kill
// test with the docker provider: three agents share one engine endpoint;
// the leader is killed ten times while the fleet rolls between two
// images. Never more containers than size+max_surge, every intent
// finished exactly once, no instance launched twice, convergence.
func TestClusterDockerLeaderKilledTenTimesDuringRollout(t *testing.T) {
	en := newEngine(t, defaultDockerHost, false)
	v1 := en.buildSample("v1", "1", "")
	v2 := en.buildSample("v2", "2", "")
	fleet := dockerFleet{name: en.fleetName("ha"), size: 3, image: en.repo() + ":1"}
	c := newCluster(t, 3, providerBlock(en.host))
	c.writeFleet("fleet.hcl", fleet.hcl())
	c.start()
	c.waitHealthy(fleet.name, 3)

	stop := make(chan struct{})
	maxSeen := make(chan int, 1)
	go func() {
		m := 0
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if cs, err := en.containers(fleet.name); err == nil {
				running := 0
				for _, ct := range cs {
					if ct.State == "running" {
						running++
					}
				}
				m = max(m, running)
			}
			select {
			case <-stop:
				maxSeen <- m
				return
			case <-tick.C:
			}
		}
	}()
	images := []string{":2", ":1"}
	for kill := 0; kill < 10; kill++ {
		if kill%4 == 0 {
			fleet.image = en.repo() + images[(kill/4)%2]
			c.writeFleet("fleet.hcl", fleet.hcl())
		}
		time.Sleep(time.Duration(200+kill*90) * time.Millisecond)
		l := c.leader()
		c.agents[l].kill9()
		c.leader(l)
		c.agents[l].launch()
		c.agents[l].waitReady(30 * time.Second)
	}
	f := c.waitHealthy(fleet.name, 3)
	close(stop)
	if m := <-maxSeen; m > 4 {
		t.Fatalf("at one moment %d containers of the fleet were running, more than size 3 + max_surge 1", m)
	}
	want := v2 // the last write was at kill 8: image :2
	for _, in := range f.Instances {
		if in.ImageDigest != want {
			t.Fatalf("instance %s runs %s, want %s (v1 %s)", in.ID, in.ImageDigest, want, v1)
		}
	}
	time.Sleep(2 * time.Second)
	if cs := en.mustContainers(fleet.name); len(cs) != 3 {
		t.Fatalf("%d containers of the fleet after convergence, want 3", len(cs))
	}
	planned := auditIntents(t, c.agents[c.leader()].events())
	t.Logf("%d intents audited", planned)
}

// TestClusterSigtermHandsLeadershipOver: a leader stopped with SIGTERM
// transfers leadership before it exits, and keeps its membership.
func TestClusterSigtermHandsLeadershipOver(t *testing.T) {
	c := newCluster(t, 3, "")
	c.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	c.start()
	c.waitHealthy("web", 1)
	l := c.leader()
	c.agents[l].stop()
	logs, _ := os.ReadFile(filepath.Join(c.agents[l].dir, "agent.log"))
	if !strings.Contains(string(logs), "leadership handed over") {
		t.Fatal("the stopping leader did not hand leadership over")
	}
	// Losing leadership is logged as what it is, not as an outage.
	if strings.Contains(string(logs), "provider unreachable") {
		t.Fatal("the leader that handed over logged 'provider unreachable'")
	}
	nl := c.leader(l)
	ms, err := c.agents[nl].client.Members(context.Background())
	if err != nil || len(ms) != 3 {
		t.Fatalf("members after a SIGTERM (membership must be kept): %+v %v", ms, err)
	}
	c.agents[l].launch()
	c.agents[l].waitReady(30 * time.Second)
}
