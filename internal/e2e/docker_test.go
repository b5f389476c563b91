package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/provider/docker"
	"github.com/immutd/immutd/internal/state"
)

// End-to-end tests of docker fleets: the real immutd binary keeping
// fleets of the sample app as containers on the machine's engine (or, for
// the engine outage, on a private dockerd the test starts). The engine
// and fleet helpers, and how everything a test makes is named and
// removed, are in harness_test.go; the private dockerd is at the end of
// this file. The docker rows of TestBrokenInstanceIsReplaced are in
// broken_instance_test.go.

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
		body := get(t, "http://"+in.Address+"/")
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
	after := s.e.lastSeq()

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
	for _, ev := range s.e.eventsAfter(after) {
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
	after := e.lastSeq()

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
		for _, ev := range e.eventsAfter(after) {
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
	if findEvent(e.eventsAfter(after), "remediation_blocked", "") == nil {
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
	if findEvent(e.eventsAfter(after), "remediation_unblocked", "") == nil {
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
	after := s.e.lastSeq()

	s.en.tag(v2, "1")
	var moved *state.Event
	// The leader checks references every 30s.
	s.e.waitFor("an image_ref_moved event", 45*time.Second, func() (bool, string) {
		evs := s.e.eventsAfter(after)
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

// privateDockerd is a dockerd of the test's own, with its own data and
// exec roots, socket and default bridge, no iptables rules, and
// --live-restore so its containers outlive it.
//
// It must not run with --bridge=none: a dockerd started that way
// deletes the host's docker0 interface (moby's
// removeDefaultBridgeInterface), which breaks bridge networking of the
// machine's own engine. It gets a bridge interface the test creates and
// deletes instead; its containers use host networking.
type privateDockerd struct {
	t        testing.TB
	dir      string // config, socket, pidfile, data root, log
	execRoot string // short: unix socket paths below it must fit
	bridge   string // the daemon's default bridge, created by the test
	host     string
	logPath  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// startPrivateDockerd starts a private dockerd and registers its removal:
// its containers, the daemon, its containerd and shims, its mounts and
// directories. Call it before newEngine and newEnv.
func startPrivateDockerd(t testing.TB) *privateDockerd {
	t.Helper()
	if _, err := exec.LookPath("dockerd"); err != nil {
		t.Fatalf("the engine-outage test needs dockerd on PATH: %v", err)
	}
	dir, err := os.MkdirTemp("", "immutd-e2e-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	execRoot, err := os.MkdirTemp("/tmp", "ied")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	d := &privateDockerd{t: t, dir: dir, execRoot: execRoot, bridge: "ied" + hex.EncodeToString(b),
		host: "unix://" + filepath.Join(dir, "docker.sock"), logPath: filepath.Join(dir, "dockerd.log")}
	t.Cleanup(d.cleanup)
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "link", "add", d.bridge, "type", "bridge").CombinedOutput(); err != nil {
		d.bridge = ""
		t.Fatalf("create the private dockerd's bridge: %v: %s", err, out)
	}
	d.start()
	return d
}

func (d *privateDockerd) args() []string {
	return []string{
		"--config-file", filepath.Join(d.dir, "daemon.json"),
		"--host", d.host,
		"--data-root", filepath.Join(d.dir, "data"),
		"--exec-root", filepath.Join(d.execRoot, "x"),
		"--pidfile", filepath.Join(d.dir, "docker.pid"),
		"--bridge", d.bridge, "--iptables=false", "--ip-masq=false", "--ip-forward=false",
		"--live-restore",
	}
}

// start starts the daemon on the test's directories and waits (bounded)
// until it answers. A daemon that does not come up fails the test with
// its log.
func (d *privateDockerd) start() {
	d.t.Helper()
	if err := d.startErr(); err != nil {
		d.t.Fatal(err)
	}
}

func (d *privateDockerd) startErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		return fmt.Errorf("private dockerd: already running")
	}
	f, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("dockerd", d.args()...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start dockerd: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	d.cmd, d.done = cmd, done

	cli, err := client.NewClientWithOpts(client.WithHost(d.host), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			d.cmd = nil
			return fmt.Errorf("private dockerd exited while starting (%v); log:\n%s", cmd.ProcessState, d.logTail(60))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Ping(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("private dockerd did not answer within 60s: %v; log:\n%s", err, d.logTail(60))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop stops the daemon with SIGTERM to the pid in its pidfile and waits
// (bounded) until it exited. Its containers keep running (live-restore).
func (d *privateDockerd) stop() {
	d.t.Helper()
	if err := d.stopErr(); err != nil {
		d.t.Fatal(err)
	}
}

func (d *privateDockerd) stopErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return nil
	}
	pid := d.cmd.Process.Pid
	if b, err := os.ReadFile(filepath.Join(d.dir, "docker.pid")); err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pid = p
		}
	}
	if pid != d.cmd.Process.Pid {
		return fmt.Errorf("private dockerd: pidfile says %d, the process started is %d", pid, d.cmd.Process.Pid)
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	var err error
	select {
	case <-d.done:
	case <-time.After(45 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		err = fmt.Errorf("private dockerd did not stop within 45s of SIGTERM; killed")
	}
	d.cmd = nil
	return err
}

func (d *privateDockerd) running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd != nil
}

// cleanup removes every container of the daemon (starting it again if a
// test left it stopped), stops it, waits for its containerd and shims to
// exit, unmounts what it left mounted and removes its directories.
func (d *privateDockerd) cleanup() {
	t := d.t
	if !d.running() {
		// Its containers still run in their shims; the daemon removes them.
		if err := d.startErr(); err != nil {
			t.Errorf("cleanup: restarting the private dockerd: %v", err)
		}
	}
	if d.running() {
		cli, err := client.NewClientWithOpts(client.WithHost(d.host), client.WithAPIVersionNegotiation())
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), engineOpTimeout)
			cs, err := cli.ContainerList(ctx, container.ListOptions{All: true})
			if err != nil {
				t.Errorf("cleanup: list containers of the private dockerd: %v", err)
			}
			for _, c := range cs {
				if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
					t.Errorf("cleanup: remove container %s: %v", c.ID, err)
				}
			}
			cancel()
			cli.Close()
		}
	}
	if err := d.stopErr(); err != nil {
		t.Error(err)
	}
	// Its containerd and any shim name the exec root on their command line.
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := processesNaming(d.execRoot)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("cleanup: processes of the private dockerd still running after 30s, killing them: %v", left)
			for _, pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d.bridge != "" {
		if out, err := exec.Command("ip", "link", "del", d.bridge).CombinedOutput(); err != nil {
			t.Errorf("cleanup: delete bridge %s: %v: %s", d.bridge, err, out)
		}
	}
	for _, mp := range mountsUnder(d.dir, d.execRoot) {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
			t.Errorf("cleanup: unmount %s: %v", mp, err)
		}
	}
	if t.Failed() {
		t.Logf("private dockerd log (tail):\n%s", d.logTail(40))
	}
	for _, p := range []string{d.dir, d.execRoot} {
		if err := os.RemoveAll(p); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

func (d *privateDockerd) logTail(n int) string {
	b, _ := os.ReadFile(d.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// processesNaming lists live processes whose command line contains s.
func processesNaming(s string) []int {
	return liveProcesses(func(proc string) bool {
		b, err := os.ReadFile(filepath.Join(proc, "cmdline"))
		return err == nil && bytes.Contains(b, []byte(s))
	})
}

// mountsUnder lists the mount points at or below any of dirs, deepest
// first.
func mountsUnder(dirs ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, d := range dirs {
			if mp == d || strings.HasPrefix(mp, d+"/") {
				out = append(out, mp)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
