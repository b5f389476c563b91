package e2e

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/provider/docker"
	"github.com/immutd/immutd/internal/state"
)

// End-to-end tests of docker fleets: the real immutd binary keeping
// fleets of the sample app as containers on the machine's engine (or, for
// the engine outage, on a private dockerd the test starts). See
// dockerd_test.go for the helpers and for how everything a test makes is
// named and removed.

// dockerSetup is an agent, an engine and a fleet of the sample app v1.
type dockerSetup struct {
	e     *env
	en    *engine
	fleet dockerFleet
	v1    string // image ID of <repo>:1
}

// startDockerFleet builds <repo>:1 (v1), starts an agent keeping a fleet
// of size of it and waits until all are healthy.
func startDockerFleet(t *testing.T, what string, size int, mod func(*dockerFleet)) *dockerSetup {
	t.Helper()
	en := newEngine(t, defaultDockerHost, false)
	v1 := en.buildSample("v1", "1", "")
	f := dockerFleet{name: en.fleetName(what), size: size, image: en.repo() + ":1"}
	if mod != nil {
		mod(&f)
	}
	e := newDockerEnv(t, en)
	e.writeFleet("fleet.hcl", f.hcl())
	e.start()
	e.waitHealthy(f.name, size, v1, 60*time.Second)
	return &dockerSetup{e: e, en: en, fleet: f, v1: v1}
}

// containerOf finds the fleet's container of an instance.
func containerOf(cs []container.Summary, instanceID string) (container.Summary, bool) {
	for _, c := range cs {
		if c.Labels[docker.LabelInstance] == instanceID {
			return c, true
		}
	}
	return container.Summary{}, false
}

func TestDockerFleetComesUpHealthy(t *testing.T) {
	s := startDockerFleet(t, "up", 3, nil)
	f := s.e.fleet(s.fleet.name)
	if f.ImageDigest != s.v1 {
		t.Fatalf("fleet pinned to %s, want the image ID of %s: %s", f.ImageDigest, s.fleet.image, s.v1)
	}
	if f.UpToDate != 3 {
		t.Errorf("status says %d instances up to date, want 3: %s", f.UpToDate, describe(f))
	}
	cs := s.en.mustContainers(s.fleet.name)
	if len(cs) != 3 {
		t.Fatalf("%d containers of the fleet on the engine, want 3", len(cs))
	}
	for _, in := range f.Instances {
		c, ok := containerOf(cs, in.ID)
		if !ok {
			t.Fatalf("instance %s has no container", in.ID)
		}
		if c.ID != in.ProviderRef || c.Names[0] != "/immutd-"+in.ID || c.ImageID != s.v1 || c.State != "running" {
			t.Errorf("instance %s: container %s name %v image %s state %s; status says ref %s", in.ID, c.ID, c.Names, c.ImageID, c.State, in.ProviderRef)
		}
		if c.Labels[docker.LabelManaged] != "true" || c.Labels[docker.LabelImage] != s.v1 {
			t.Errorf("container %s labels: %v", c.ID, c.Labels)
		}
		// Published on 127.0.0.1 only.
		for _, p := range c.Ports {
			if p.PublicPort != 0 && p.IP != "127.0.0.1" {
				t.Errorf("container %s publishes on %s:%d", c.ID, p.IP, p.PublicPort)
			}
		}
		if !strings.HasPrefix(in.Address, "127.0.0.1:") || in.Address != publishedAddr(c) {
			t.Errorf("instance %s address %q, container published at %q", in.ID, in.Address, publishedAddr(c))
		}
		body := getBody(t, "http://"+in.Address+"/")
		if !strings.Contains(body, "sampleapp 1.0.0") || !strings.Contains(body, "instance: "+in.ID) || !strings.Contains(body, "fleet: "+s.fleet.name) {
			t.Errorf("instance %s at %s answers:\n%s", in.ID, in.Address, body)
		}
		if answerErr(in.Address) != nil {
			t.Errorf("instance %s at %s does not answer /healthz", in.ID, in.Address)
		}
	}
	// A fresh container has no in-place changes: over several drift
	// intervals nothing is replaced.
	before := ids(f)
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		now := s.e.fleet(s.fleet.name)
		for id := range before {
			if !ids(now)[id] {
				t.Fatalf("instance %s of a quiet fleet went away: %s", id, describe(now))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, ev := range s.e.events() {
		if ev.Fleet == s.fleet.name && (ev.Action == "terminate_planned" || ev.Action == "terminated") {
			t.Fatalf("a quiet fleet had a termination: %+v", ev)
		}
	}
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDockerKilledContainerIsReplaced(t *testing.T) {
	s := startDockerFleet(t, "kill", 3, nil)
	f := s.e.fleet(s.fleet.name)
	victim := f.Instances[1]
	ctx, cancel := s.en.ctx()
	defer cancel()
	if err := s.en.cli.ContainerKill(ctx, victim.ProviderRef, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	s.e.waitHealthy(s.fleet.name, 3, s.v1, 60*time.Second, victim.ID)
	ev := findEvent(s.e.events(), "terminated", victim.ID)
	if ev == nil || ev.Reason != "exited" {
		t.Fatalf("want a terminated event with reason exited for %s, got %+v", victim.ID, ev)
	}
	if !strings.Contains(strings.Join(ev.Evidence, " "), "exited with code 137") {
		t.Errorf("the evidence does not say how it exited: %q", ev.Evidence)
	}
	// The dead container is removed, and the fleet has 3 containers.
	s.e.waitFor("the killed container to be removed", 30*time.Second, func() (bool, string) {
		_, err := s.en.inspect(victim.ProviderRef)
		return cerrdefs.IsNotFound(err), fmt.Sprint(err)
	})
	if cs := s.en.mustContainers(s.fleet.name); len(cs) != 3 {
		t.Fatalf("%d containers of the fleet after the replacement, want 3", len(cs))
	}
}

func TestDockerInPlaceChangeIsReplaced(t *testing.T) {
	s := startDockerFleet(t, "inplace", 2, nil)
	f := s.e.fleet(s.fleet.name)

	// (a) A file of the image changed by a process run in the container.
	victim := f.Instances[0]
	s.en.execIn(victim.ProviderRef, "/bin/sampleapp", "-write-file", "/config/app.conf", "-content", "x")
	ev := s.e.waitTerminated(s.fleet.name, victim.ID)
	if ev.Reason != "drift_mutated" || !strings.Contains(strings.Join(ev.Evidence, "\n"), "modified /config/app.conf") {
		t.Fatalf("want reason drift_mutated with evidence naming /config/app.conf, got %+v", ev)
	}
	f = s.e.waitHealthy(s.fleet.name, 2, s.v1, 60*time.Second, victim.ID)

	// (b) A file added from outside, as `docker cp` does.
	victim2 := f.Instances[1]
	s.en.copyFile(victim2.ProviderRef, "/config/added-by-e2e.conf", "greeting = \"copied in\"\n")
	ev = s.e.waitTerminated(s.fleet.name, victim2.ID)
	if ev.Reason != "drift_mutated" || !strings.Contains(strings.Join(ev.Evidence, "\n"), "added /config/added-by-e2e.conf") {
		t.Fatalf("want reason drift_mutated with evidence naming the added file, got %+v", ev)
	}
	s.e.waitHealthy(s.fleet.name, 2, s.v1, 60*time.Second, victim.ID, victim2.ID)
	if cs := s.en.mustContainers(s.fleet.name); len(cs) != 2 {
		t.Fatalf("%d containers of the fleet, want 2", len(cs))
	}
}

// rolloutSample is what one sample of a rollout saw.
type rolloutSample struct {
	servingCheck
	containers int // containers of the fleet on the engine, any state
	byImage    map[string]int
}

// sample lists the engine's containers of the fleet while it checks
// which instances are healthy and answering (see servingCheck).
func (s *dockerSetup) sample(t testing.TB) (rolloutSample, api.Fleet) {
	t.Helper()
	type listed struct {
		cs  []container.Summary
		err error
	}
	lc := make(chan listed, 1)
	go func() {
		cs, err := s.en.containers(s.fleet.name)
		lc <- listed{cs, err}
	}()
	r := rolloutSample{servingCheck: s.e.checkServing(s.fleet.name), byImage: map[string]int{}}
	l := <-lc
	if l.err != nil {
		t.Fatalf("list containers: %v", l.err)
	}
	r.containers = len(l.cs)
	for _, c := range l.cs {
		r.byImage[c.ImageID]++
	}
	return r, r.after
}

// TestDockerRolloutIsSurgeFirst changes the fleet's image tag and samples
// the status and the engine every 20ms: never fewer than 3 healthy
// instances, never more than 3 + max_surge containers, and at the end 3
// healthy instances on the new image ID.
func TestDockerRolloutIsSurgeFirst(t *testing.T) {
	s := startDockerFleet(t, "roll", 3, nil)
	v2 := s.en.buildSample("v2", "2", "")
	old := ids(s.e.fleet(s.fleet.name))

	next := s.fleet
	next.image = s.en.repo() + ":2"
	s.e.writeFleet("fleet.hcl", next.hcl())
	start := time.Now()
	deadline := start.Add(90 * time.Second)
	samples, unsettled, maxContainers, minHealthy := 0, 0, 0, 99
	for {
		r, f := s.sample(t)
		maxContainers = max(maxContainers, r.containers)
		if !r.settled {
			unsettled++
		} else {
			samples++
			minHealthy = min(minHealthy, r.serving)
			if r.healthy < 3 || r.serving < 3 {
				t.Fatalf("sample %d: only %d healthy instances (%d of them answering) during the rollout: %s; not answering: %v", samples, r.healthy, r.serving, describe(f), r.silent)
			}
		}
		if r.containers > 4 {
			t.Fatalf("sample %d: %d containers of the fleet, more than size 3 + max_surge 1: %s", samples, r.containers, describe(f))
		}
		done := f.ImageDigest == v2 && len(f.Instances) == 3 && r.byImage[v2] == 3 && r.containers == 3
		for _, in := range f.Instances {
			done = done && in.ImageDigest == v2 && in.State == "healthy" && !old[in.ID]
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout did not finish in 90s: %s; containers by image %v", describe(f), r.byImage)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if samples < 5 {
		t.Fatalf("only %d settled samples (%d unsettled): the rollout was not observed", samples, unsettled)
	}
	t.Logf("rollout finished in %v: %d settled samples (%d taken across a health change), at least %d healthy and answering, at most %d containers", time.Since(start).Round(time.Millisecond), samples, unsettled, minHealthy, maxContainers)
	n := 0
	for _, ev := range s.e.events() {
		if ev.Action == "terminated" && old[ev.InstanceID] {
			n++
			if ev.Reason != "drift_image" {
				t.Errorf("old instance %s terminated for %s, want drift_image", ev.InstanceID, ev.Reason)
			}
		}
	}
	if n != 3 {
		t.Fatalf("want the 3 old instances terminated, got %d", n)
	}
}

// TestDockerBrokenImageDoesNotTakeTheFleetDown rolls to an image whose
// health check fails from the start: for 30s at most max_surge broken
// containers exist at once, the old instances keep running and stay
// healthy, and the failures are reported.
func TestDockerBrokenImageDoesNotTakeTheFleetDown(t *testing.T) {
	t.Parallel() // mostly a 30s observation window
	s := startDockerFleet(t, "broken", 3, func(f *dockerFleet) { f.startup = "5s" })
	broken := s.en.buildSample("v2", "3", `CMD ["-fail-after", "1ms"]`)
	f0 := s.e.fleet(s.fleet.name)
	old := ids(f0)
	after := lastSeqOf(s.e)

	next := s.fleet
	next.image = s.en.repo() + ":3"
	s.e.writeFleet("fleet.hcl", next.hcl())
	s.e.waitFor("the new image to be pinned", 15*time.Second, func() (bool, string) {
		f := s.e.fleet(s.fleet.name)
		return f.ImageDigest == broken, f.ImageDigest
	})
	start := time.Now()
	samples, maxBroken, brokenSeen, backoffSeen := 0, 0, map[string]bool{}, false
	for time.Since(start) < 30*time.Second {
		r, f := s.sample(t)
		samples++
		for _, b := range f.Blocked {
			backoffSeen = backoffSeen || b.Cause == "launch_backoff"
		}
		maxBroken = max(maxBroken, r.byImage[broken])
		if r.byImage[broken] > 1 {
			t.Fatalf("sample %d: %d containers of the broken image at once, more than max_surge 1: %s", samples, r.byImage[broken], describe(f))
		}
		if r.containers > 4 {
			t.Fatalf("sample %d: %d containers of the fleet: %s", samples, r.containers, describe(f))
		}
		healthyOld := 0
		for _, in := range f.Instances {
			if old[in.ID] && in.State == "healthy" && answerErr(in.Address) == nil {
				healthyOld++
			}
			if !old[in.ID] {
				brokenSeen[in.ID] = true
			}
		}
		if healthyOld != 3 || r.byImage[s.v1] != 3 {
			t.Fatalf("sample %d: %d of the 3 old instances healthy, %d containers on the old image: %s", samples, healthyOld, r.byImage[s.v1], describe(f))
		}
		time.Sleep(100 * time.Millisecond)
	}
	f := s.e.fleet(s.fleet.name)
	var neverHealthy []string
	for _, ev := range eventsAfter(s.e, after) {
		if ev.Fleet != s.fleet.name {
			continue
		}
		if old[ev.InstanceID] && (ev.Action == "terminate_planned" || ev.Action == "terminated") {
			t.Fatalf("an old, healthy instance was terminated: %+v", ev)
		}
		if ev.Action == "terminated" && ev.Reason == "never_healthy" {
			neverHealthy = append(neverHealthy, ev.InstanceID)
		}
	}
	t.Logf("%d samples over 30s: %d broken instances tried (at most %d at once), %d terminated never_healthy, launch failures %d, launch_backoff seen %v",
		samples, len(brokenSeen), maxBroken, len(neverHealthy), f.LaunchFailures, backoffSeen)
	if len(neverHealthy) == 0 && !backoffSeen {
		t.Fatalf("no never_healthy termination and no launch_backoff in 30s: %s blocked %+v", describe(f), f.Blocked)
	}
	if f.LaunchFailures == 0 {
		t.Errorf("the status counts no launch failures after %d never_healthy instances", len(neverHealthy))
	}
}

func lastSeqOf(e *env) uint64 {
	evs := e.events()
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Seq
}

func eventsAfter(e *env, after uint64) []state.Event {
	var out []state.Event
	for _, ev := range e.events() {
		if ev.Seq > after {
			out = append(out, ev)
		}
	}
	return out
}

// TestDockerEngineUnreachable stops the engine (a private dockerd with
// live-restore) under a healthy fleet: nothing is terminated, the status
// says why remediation is blocked, the containers keep serving. Started
// again, the engine's fleet converges without duplicates.
func TestDockerEngineUnreachable(t *testing.T) {
	d := startPrivateDockerd(t)
	en := newEngine(t, d.host, true)
	v1 := en.buildSample("v1", "1", "")
	f := dockerFleet{name: en.fleetName("outage"), size: 2, image: en.repo() + ":1",
		launch: `    env = { HOST = "127.0.0.1" }`, docker: `network_mode = "host"`}
	e := newDockerEnv(t, en)
	e.writeFleet("fleet.hcl", f.hcl())
	e.start()
	before := e.waitHealthy(f.name, 2, v1, 60*time.Second)
	for _, in := range before.Instances {
		if !strings.HasPrefix(in.Address, "127.0.0.1:") || answerErr(in.Address) != nil {
			t.Fatalf("instance %s with host networking does not answer at %q", in.ID, in.Address)
		}
	}
	after := lastSeqOf(e)

	d.stop()
	stopped := time.Now()
	blockedSeen := false
	var f1 api.Fleet
	for time.Since(stopped) < 10*time.Second {
		st, err := e.trystatus()
		if err != nil {
			t.Fatalf("status while the engine is down: %v", err)
		}
		f1, _ = fleetOf(st, f.name)
		for _, b := range f1.Blocked {
			if b.Cause == "provider_unreachable" {
				blockedSeen = true
			}
		}
		for _, in := range before.Instances {
			if answerErr(in.Address) != nil {
				t.Fatalf("instance %s stopped serving while the engine was down", in.ID)
			}
		}
		for _, ev := range eventsAfter(e, after) {
			if ev.Action == "terminate_planned" || ev.Action == "terminated" {
				t.Fatalf("a termination while the engine is unreachable: %+v", ev)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !blockedSeen {
		t.Fatalf("the status never said provider_unreachable in 10s of outage: blocked %+v", f1.Blocked)
	}
	last := false
	for _, b := range f1.Blocked {
		last = last || b.Cause == "provider_unreachable"
	}
	if !last {
		t.Fatalf("the fleet is not blocked at the end of the outage: %+v", f1.Blocked)
	}
	if findEvent(eventsAfter(e, after), "remediation_blocked", "") == nil {
		t.Errorf("no remediation_blocked event for the outage")
	}

	d.start()
	deadline := time.Now().Add(60 * time.Second)
	maxContainers := 0
	for {
		cs, err := en.containers(f.name)
		if err != nil {
			t.Fatalf("list after the restart: %v", err)
		}
		maxContainers = max(maxContainers, len(cs))
		if len(cs) > 3 {
			t.Fatalf("%d containers of the fleet after the engine came back, more than size 2 + max_surge 1", len(cs))
		}
		st, err := e.trystatus()
		if err != nil {
			t.Fatal(err)
		}
		fl, _ := fleetOf(st, f.name)
		healthy := 0
		for _, in := range fl.Instances {
			if in.State == "healthy" && in.UpToDate {
				healthy++
			}
		}
		if healthy == 2 && len(fl.Instances) == 2 && len(fl.Blocked) == 0 && len(cs) == 2 {
			kept := 0
			for _, in := range fl.Instances {
				if ids(before)[in.ID] {
					kept++
				}
			}
			t.Logf("converged: %d of 2 instances kept, at most %d containers: %s", kept, maxContainers, describe(fl))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fleet did not converge within 60s of the engine's return: %s blocked %+v, %d containers", describe(fl), fl.Blocked, len(cs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	launched := map[string]int{}
	for _, ev := range e.events() {
		if ev.Fleet == f.name && ev.Action == "launched" {
			launched[ev.InstanceID]++
		}
	}
	for id, n := range launched {
		if n > 1 {
			t.Fatalf("instance %s launched %d times", id, n)
		}
	}
	if findEvent(eventsAfter(e, after), "remediation_unblocked", "") == nil {
		t.Errorf("no remediation_unblocked event after the outage")
	}
}

// TestDockerMovedTagIsReportedNotRolled moves the fleet's tag to other
// content: the fleet keeps its pinned image, an image_ref_moved event and
// metric say so, and `immutd fleet resolve` rolls it.
func TestDockerMovedTagIsReportedNotRolled(t *testing.T) {
	t.Parallel() // mostly waiting for the leader's 30s reference check
	s := startDockerFleet(t, "moved", 2, nil)
	v2 := s.en.buildSample("v2", "2", "")
	before := ids(s.e.fleet(s.fleet.name))
	after := lastSeqOf(s.e)

	s.en.tag(v2, "1")
	var moved *state.Event
	// The leader checks references every 30s.
	s.e.waitFor("an image_ref_moved event", 45*time.Second, func() (bool, string) {
		evs := eventsAfter(s.e, after)
		for _, ev := range evs {
			if ev.Action == "launch_planned" || ev.Action == "terminate_planned" {
				t.Fatalf("the fleet changed after its tag moved: %+v", ev)
			}
		}
		moved = findEvent(evs, "image_ref_moved", "")
		return moved != nil, describe(s.e.fleet(s.fleet.name))
	})
	if moved.Fleet != s.fleet.name || !strings.Contains(strings.Join(moved.Evidence, " "), v2) {
		t.Errorf("image_ref_moved event: %+v", moved)
	}
	f := s.e.fleet(s.fleet.name)
	if f.ImageDigest != s.v1 || len(f.Instances) != 2 || !ids(f)[keys(before)[0]] || !ids(f)[keys(before)[1]] {
		t.Fatalf("the fleet rolled by itself: pinned %s, %s", f.ImageDigest, describe(f))
	}
	metrics := get(t, "http://"+s.e.httpAddr+"/metrics")
	want := regexp.MustCompile(`(?m)^immutd_image_ref_moved\{fleet="` + regexp.QuoteMeta(s.fleet.name) + `"\} 1$`)
	if !want.MatchString(metrics) {
		t.Fatalf("metrics lack immutd_image_ref_moved{fleet=%q} 1", s.fleet.name)
	}

	out, code := s.e.cli("fleet", "resolve", s.fleet.name)
	if code != 0 {
		t.Fatalf("fleet resolve: exit %d: %s", code, out)
	}
	f = s.e.waitHealthy(s.fleet.name, 2, v2, 90*time.Second, keys(before)[0], keys(before)[1])
	if f.ImageDigest != v2 {
		t.Fatalf("after resolve the fleet is pinned to %s, want %s", f.ImageDigest, v2)
	}
}
