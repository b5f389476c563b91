package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/provider/docker"
	"github.com/immutd/immutd/internal/state"
)

// Benchmarks of docker fleets on the machine's engine, run with
// -benchtime 1x: each runs several trials inside its one iteration and
// reports p50/p95/max in milliseconds, and measures its baseline B in the
// same run: the engine's own `docker run` (create + start of the sample
// image with a published port) until /healthz first answers 200, polled
// every 10ms, as the median of dockerBaselineTrials.
//
// The fleets use a 1s probe interval, unhealthy_threshold 3 and a 1s
// drift interval. Each benchmark reports its target (from B) as
// target_ms next to the measurements it applies to.

const (
	dockerBenchTrials    = 5
	dockerBaselineTrials = 5
	pollEvery            = 10 * time.Millisecond
)

// dockerBench is an agent with one docker fleet on the machine's engine.
type dockerBench struct {
	*dockerSetup
	baseline []time.Duration
	v2       string
}

func startDockerBench(b *testing.B, what string, size int) *dockerBench {
	b.Helper()
	en := newEngine(b, defaultDockerHost, false)
	v1 := en.buildSample("v1", "1", "")
	v2 := en.buildSample("v2", "2", "")
	base := en.baseline(b, v1, dockerBaselineTrials)
	f := dockerFleet{name: en.fleetName(what), size: size, image: en.repo() + ":1"}
	e := newDockerEnv(b, en)
	e.writeFleet("fleet.hcl", f.hcl())
	e.start()
	e.waitHealthy(f.name, size, v1, 60*time.Second)
	return &dockerBench{dockerSetup: &dockerSetup{e: e, en: en, fleet: f, v1: v1}, baseline: base, v2: v2}
}

// median of ds.
func median(ds []time.Duration) time.Duration { return percentile(ds, 0.5) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// baseline runs the image the way `docker run -d -p 127.0.0.1::8080`
// does, trials times, and returns the time from the create call to the
// first 200 of /healthz.
func (en *engine) baseline(b *testing.B, imageID string, trials int) []time.Duration {
	b.Helper()
	var out []time.Duration
	for i := 0; i < trials; i++ {
		ctx, cancel := en.ctx()
		port := nat.Port("8080/tcp")
		t0 := time.Now()
		c, err := en.cli.ContainerCreate(ctx,
			&container.Config{Image: imageID, Env: []string{"PORT=8080"}, ExposedPorts: nat.PortSet{port: struct{}{}},
				Labels: map[string]string{e2eRunLabel: en.id}},
			&container.HostConfig{PortBindings: nat.PortMap{port: {{HostIP: "127.0.0.1"}}}}, nil, nil, "")
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		if err := en.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			cancel()
			b.Fatal(err)
		}
		insp, err := en.cli.ContainerInspect(ctx, c.ID)
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		addr := ""
		for _, pb := range insp.NetworkSettings.Ports[port] {
			addr = "127.0.0.1:" + pb.HostPort
		}
		if addr == "" {
			cancel()
			b.Fatalf("baseline container %s published no port", c.ID)
		}
		if !pollHealthy(addr, 30*time.Second) {
			cancel()
			b.Fatalf("baseline container at %s did not answer within 30s", addr)
		}
		out = append(out, time.Since(t0))
		if err := en.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			b.Errorf("remove baseline container: %v", err)
		}
		cancel()
	}
	return out
}

// pollHealthy polls addr's /healthz every 10ms until it answers 200.
func pollHealthy(addr string, timeout time.Duration) bool {
	c := http.Client{Timeout: 200 * time.Millisecond}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return true
			}
		}
		time.Sleep(pollEvery)
	}
	return false
}

// containerIDs is the set of the fleet's container ids.
func (d *dockerBench) containerIDs() map[string]bool {
	out := map[string]bool{}
	for _, c := range d.en.mustContainers(d.fleet.name) {
		out[c.ID] = true
	}
	return out
}

// waitNewServing polls the engine every 10ms for a running container of
// the fleet that is not in known, and that container's published
// /healthz until it answers 200; it returns when that happened.
func (d *dockerBench) waitNewServing(b *testing.B, known map[string]bool, timeout time.Duration) time.Time {
	b.Helper()
	c := http.Client{Timeout: 200 * time.Millisecond}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		cs, err := d.en.containers(d.fleet.name)
		if err != nil {
			b.Fatal(err)
		}
		for _, ct := range cs {
			addr := publishedAddr(ct)
			if known[ct.ID] || ct.State != "running" || addr == "" {
				continue
			}
			resp, err := c.Get("http://" + addr + "/healthz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return time.Now()
				}
			}
		}
		time.Sleep(pollEvery)
	}
	b.Fatalf("no new container of %s answered within %v", d.fleet.name, timeout)
	return time.Time{}
}

// statusHealthy polls the status every 10ms until it shows n healthy
// instances other than without, on the image, and returns when.
func (d *dockerBench) statusHealthy(n int, image string, without string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		st, err := d.e.trystatus()
		if err == nil {
			f, _ := fleetOf(st, d.fleet.name)
			healthy := 0
			for _, in := range f.Instances {
				if in.ID != without && in.State == "healthy" && in.ImageDigest == image {
					healthy++
				}
			}
			if healthy == n {
				return time.Now(), nil
			}
			last = describe(f)
		}
		time.Sleep(pollEvery)
	}
	return time.Time{}, fmt.Errorf("status did not show %d healthy instances within %v: %s", n, timeout, last)
}

// replaced waits, from t0 on, both for a new container of the fleet to
// serve (see waitNewServing) and for the status to show 3 healthy
// instances again without the victim; the two are watched at the same
// time so neither measurement waits for the other.
func (d *dockerBench) replaced(b *testing.B, t0 time.Time, known map[string]bool, victim string) (serving, healthy time.Duration) {
	b.Helper()
	type result struct {
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		at, err := d.statusHealthy(3, d.v1, victim, 60*time.Second)
		done <- result{at, err}
	}()
	serving = d.waitNewServing(b, known, 60*time.Second).Sub(t0)
	r := <-done
	if r.err != nil {
		b.Fatal(r.err)
	}
	return serving, r.at.Sub(t0)
}

// settle waits until the fleet is exactly size healthy instances and
// containers, without the given instances, so the next trial starts
// from a quiet fleet.
func (d *dockerBench) settle(b *testing.B, size int, image string, without ...string) {
	b.Helper()
	d.e.waitHealthy(d.fleet.name, size, image, 90*time.Second, without...)
	d.e.waitFor("the fleet's containers to settle", 60*time.Second, func() (bool, string) {
		cs, err := d.en.containers(d.fleet.name)
		return err == nil && len(cs) == size, fmt.Sprint(len(cs), err)
	})
}

func (d *dockerBench) reportBaseline(b *testing.B) time.Duration {
	report(b, "baseline_B", d.baseline)
	return median(d.baseline)
}

// replacementTrials runs dockerBenchTrials trials on a healthy fleet of
// 3: breakOne breaks the trial's victim and returns when it did (t0);
// then the replacement is timed (see replaced) and the fleet settles.
func (d *dockerBench) replacementTrials(b *testing.B, breakOne func(i int, victim api.Instance) time.Time) (serving, healthy []time.Duration) {
	b.Helper()
	for i := 0; i < dockerBenchTrials; i++ {
		f := d.e.waitHealthy(d.fleet.name, 3, d.v1, 60*time.Second)
		victim := f.Instances[i%3]
		known := d.containerIDs()
		t0 := breakOne(i, victim)
		sv, h := d.replaced(b, t0, known, victim.ID)
		serving, healthy = append(serving, sv), append(healthy, h)
		d.settle(b, 3, d.v1, victim.ID)
	}
	return serving, healthy
}

// BenchmarkDockerKillToReplacementHealthy: `docker kill` of one of 3
// containers; time until a new container of the fleet answers /healthz
// (replacement_serving) and until the status shows 3 healthy instances
// again (status_healthy). Target: <= 2 x B.
func BenchmarkDockerKillToReplacementHealthy(b *testing.B) {
	for b.Loop() {
		d := startDockerBench(b, "bkill", 3)
		serving, healthy := d.replacementTrials(b, func(_ int, victim api.Instance) time.Time {
			ctx, cancel := d.en.ctx()
			defer cancel()
			t0 := time.Now()
			if err := d.en.cli.ContainerKill(ctx, victim.ProviderRef, "SIGKILL"); err != nil {
				b.Fatal(err)
			}
			return t0
		})
		B := d.reportBaseline(b)
		report(b, "replacement_serving", serving)
		report(b, "status_healthy", healthy)
		b.ReportMetric(ms(2*B), "target_ms")
	}
}

// BenchmarkDockerFailureToReplacementHealthy: one of 3 instances starts
// failing its health check (POST /fail at t0); time until a new container
// answers and until the status shows 3 healthy instances without it.
// Target: <= 3 x 1s + 2 x B.
func BenchmarkDockerFailureToReplacementHealthy(b *testing.B) {
	for b.Loop() {
		d := startDockerBench(b, "bfail", 3)
		serving, healthy := d.replacementTrials(b, func(i int, victim api.Instance) time.Time {
			// A different phase against the 1s probe interval each trial.
			time.Sleep(time.Duration(i) * 200 * time.Millisecond)
			t0 := time.Now()
			resp, err := http.Post("http://"+victim.Address+"/fail", "text/plain", nil)
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			return t0
		})
		B := d.reportBaseline(b)
		report(b, "replacement_serving", serving)
		report(b, "status_healthy", healthy)
		b.ReportMetric(ms(3*time.Second+2*B), "target_ms")
	}
}

// BenchmarkDockerInPlaceEditToReplaced: a file of the image is changed
// inside one of 3 containers (exec write at t0); time until immutd plans
// the replacement (detected, the launch_planned event), until a new
// container answers, and until the changed one is terminated (the
// terminated event; surge-first, so after the replacement is healthy).
// Target: <= drift interval (1s) + 1s.
func BenchmarkDockerInPlaceEditToReplaced(b *testing.B) {
	for b.Loop() {
		d := startDockerBench(b, "bedit", 3)
		var detected, serving, terminated []time.Duration
		for i := 0; i < dockerBenchTrials; i++ {
			f := d.e.waitHealthy(d.fleet.name, 3, d.v1, 60*time.Second)
			victim := f.Instances[i%3]
			known := d.containerIDs()
			after := d.e.lastSeq()
			t0 := time.Now()
			d.en.execIn(victim.ProviderRef, "/bin/sampleapp", "-write-file", "/config/app.conf", "-content", fmt.Sprint("edit ", i))
			serving = append(serving, d.waitNewServing(b, known, 60*time.Second).Sub(t0))
			planned := d.e.waitEvent(after, 60*time.Second, func(ev state.Event) bool {
				return ev.Fleet == d.fleet.name && ev.Action == "launch_planned"
			})
			term := d.e.waitEvent(after, 60*time.Second, func(ev state.Event) bool {
				return ev.Action == "terminated" && ev.InstanceID == victim.ID
			})
			if term.Reason != "drift_mutated" {
				b.Fatalf("instance %s terminated for %s, want drift_mutated", victim.ID, term.Reason)
			}
			detected = append(detected, planned.Time.Sub(t0))
			terminated = append(terminated, term.Time.Sub(t0))
			d.settle(b, 3, d.v1, victim.ID)
		}
		d.reportBaseline(b)
		report(b, "detected", detected)
		report(b, "replacement_serving", serving)
		report(b, "terminated", terminated)
		b.ReportMetric(ms(2*time.Second), "target_ms")
	}
}

// BenchmarkDockerRollout: the fleet file's image tag changes (3
// instances, max_surge 1, back and forth between two images); time until
// all 3 instances run the new image, are healthy, and the engine has no
// other container of the fleet. Target: <= 3 x (B + 1s) + 1s.
func BenchmarkDockerRollout(b *testing.B) {
	for b.Loop() {
		d := startDockerBench(b, "broll", 3)
		var rolled []time.Duration
		for i := 0; i < dockerBenchTrials; i++ {
			tag, id := "2", d.v2
			if i%2 == 1 {
				tag, id = "1", d.v1
			}
			next := d.fleet
			next.image = d.en.repo() + ":" + tag
			t0 := time.Now()
			d.e.writeFleet("fleet.hcl", next.hcl())
			deadline := t0.Add(120 * time.Second)
			for {
				r, f := d.sample(b)
				done := f.ImageDigest == id && len(f.Instances) == 3 && r.containers == 3 && r.byImage[id] == 3 && r.healthy == 3
				for _, in := range f.Instances {
					done = done && in.ImageDigest == id && in.State == "healthy"
				}
				if done {
					rolled = append(rolled, time.Since(t0))
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("trial %d: rollout did not finish in 120s: %s", i, describe(f))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		B := d.reportBaseline(b)
		report(b, "rollout_3", rolled)
		b.ReportMetric(ms(3*(B+time.Second)+time.Second), "target_ms")
	}
}

// BenchmarkDockerFleetEditToContainerStarted: the fleet file grows the
// fleet by one; time until immutd journals the launch (launch_planned),
// until the engine created and started the container (its Created and
// State.StartedAt), and until the launch returned (launched). Target for
// the start: <= 200ms + B.
func BenchmarkDockerFleetEditToContainerStarted(b *testing.B) {
	for b.Loop() {
		d := startDockerBench(b, "bsize", 1)
		var planned, created, started, launched []time.Duration
		for i := 0; i < dockerBenchTrials; i++ {
			size := 2 + i
			after := d.e.lastSeq()
			next := d.fleet
			next.size = size
			t0 := time.Now()
			d.e.writeFleet("fleet.hcl", next.hcl())
			pl := d.e.waitEvent(after, 30*time.Second, func(ev state.Event) bool {
				return ev.Fleet == d.fleet.name && ev.Action == "launch_planned"
			})
			la := d.e.waitEvent(after, 30*time.Second, func(ev state.Event) bool {
				return ev.Fleet == d.fleet.name && ev.Action == "launched" && ev.InstanceID == pl.InstanceID
			})
			insp, err := d.en.inspect(docker.NamePrefix + pl.InstanceID)
			if err != nil {
				b.Fatal(err)
			}
			cr, err1 := time.Parse(time.RFC3339Nano, insp.Created)
			st, err2 := time.Parse(time.RFC3339Nano, insp.State.StartedAt)
			if err1 != nil || err2 != nil {
				b.Fatalf("container times %q %q: %v %v", insp.Created, insp.State.StartedAt, err1, err2)
			}
			planned = append(planned, pl.Time.Sub(t0))
			created = append(created, cr.Sub(t0))
			started = append(started, st.Sub(t0))
			launched = append(launched, la.Time.Sub(t0))
			d.settle(b, size, d.v1)
		}
		B := d.reportBaseline(b)
		report(b, "launch_planned", planned)
		report(b, "container_created", created)
		report(b, "container_started", started)
		report(b, "launched", launched)
		b.ReportMetric(ms(200*time.Millisecond+B), "target_ms")
	}
}
