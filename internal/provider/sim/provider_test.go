package sim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

func listByID(t *testing.T, p *Provider) map[string]instance.Observed {
	t.Helper()
	all, err := p.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]instance.Observed{}
	for _, o := range all {
		if _, dup := out[o.ID]; dup {
			t.Fatalf("listed twice: %s", o.ID)
		}
		out[o.ID] = o
	}
	return out
}

func TestLaunchListTerminate(t *testing.T) {
	dir := simDir(t)
	p := open(t, dir, Options{})
	digest := testImage(t, p, "v1", "")
	ctx := t.Context()
	var launched []instance.Observed
	for i := range 3 {
		req := request("web-"+strconv.Itoa(i), "web", digest)
		o, err := p.Launch(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if o.ID != req.InstanceID || o.Fleet != "web" || o.ImageDigest != digest || o.TemplateHash != req.TemplateHash || o.Phase != instance.Running {
			t.Fatalf("launched %+v for %+v", o, req)
		}
		if !strings.HasPrefix(o.Address, "127.") || o.ProviderRef == "" || o.Location == "" {
			t.Fatalf("launched %+v: want a loopback address, a ref and a location", o)
		}
		if code := get(o.Address); code != 200 {
			t.Fatalf("GET %s: %d, want 200", o.Address, code)
		}
		launched = append(launched, o)
	}
	listed := listByID(t, p)
	if len(listed) != 3 {
		t.Fatalf("listed %d, want 3: %v", len(listed), listed)
	}
	for _, o := range launched {
		if l := listed[o.ID]; l.Address != o.Address || l.Phase != instance.Running || !l.StartedAt.Equal(o.StartedAt) {
			t.Errorf("listed %+v, launched %+v", l, o)
		}
	}
	for _, o := range launched {
		if err := p.Terminate(ctx, o.ID, time.Second); err != nil {
			t.Fatal(err)
		}
		if code := get(o.Address); code != 0 {
			t.Errorf("GET %s after terminate: %d, want no answer", o.Address, code)
		}
		if err := p.Terminate(ctx, o.ID, time.Second); err != nil {
			t.Errorf("terminate again: %v", err)
		}
	}
	if l := listByID(t, p); len(l) != 0 {
		t.Fatalf("listed after terminate: %v", l)
	}
	if err := p.Terminate(ctx, "never-launched", 0); err != nil {
		t.Errorf("terminate of a missing instance: %v", err)
	}
	// The image store refuses what it does not hold, for good.
	if _, err := p.Launch(ctx, request("x", "web", "sha256:"+strings.Repeat("1", 64))); !errors.Is(err, instance.ErrPermanent) {
		t.Errorf("launch of a missing image: %v, want a permanent error", err)
	}
}

func TestLaunchIsIdempotentAcrossProviders(t *testing.T) {
	dir := simDir(t)
	p := open(t, dir, Options{})
	q := open(t, dir, Options{})
	digest := testImage(t, p, "v1", "")
	req := request("idem-1", "web", digest)
	results := make([]instance.Observed, 8)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range results {
		pr := p
		if i%2 == 1 {
			pr = q
		}
		wg.Go(func() { results[i], errs[i] = pr.Launch(t.Context(), req) })
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if results[i].Address != results[0].Address || results[i].ProviderRef != results[0].ProviderRef {
			t.Errorf("launch %d returned %+v, launch 0 %+v", i, results[i], results[0])
		}
	}
	if l := listByID(t, q); len(l) != 1 {
		t.Fatalf("listed %d instances, want 1", len(l))
	}
}

func TestFailureRateIsReproducible(t *testing.T) {
	const n, rate = 200, 0.25
	run := func() (failed []string) {
		dir := simDir(t)
		p := open(t, dir, Options{FailureRate: rate, Seed: 42})
		digest := testImage(t, p, "v1", "")
		for i := range n {
			id := "f-" + strconv.Itoa(i)
			if _, err := p.Launch(t.Context(), request(id, "web", digest)); err != nil {
				if errors.Is(err, instance.ErrPermanent) {
					t.Fatalf("simulated failure is permanent: %v", err)
				}
				failed = append(failed, id)
			}
		}
		// A retry draws again: every id gets through in the end.
		for _, id := range failed {
			var err error
			for range 30 {
				if _, err = p.Launch(t.Context(), request(id, "web", digest)); err == nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("launch of %s failed 30 times: %v", id, err)
			}
		}
		if l := listByID(t, p); len(l) != n {
			t.Fatalf("listed %d, want %d", len(l), n)
		}
		return failed
	}
	a, b := run(), run()
	t.Logf("failure rate %v: %d of %d first launches failed", rate, len(a), n)
	if len(a) < n*rate/2 || len(a) > n*rate*2 {
		t.Errorf("%d of %d launches failed, want about %v", len(a), n, n*rate)
	}
	if strings.Join(a, ",") != strings.Join(b, ",") {
		t.Errorf("two runs with one seed failed different launches:\n%v\n%v", a, b)
	}
}

func TestLaunchLatency(t *testing.T) {
	p := open(t, simDir(t), Options{LaunchLatency: 200 * time.Millisecond})
	digest := testImage(t, p, "v1", "")
	start := time.Now()
	if _, err := p.Launch(t.Context(), request("lat-1", "web", digest)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("launch took %s, want at least the latency of 200ms", took)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Launch(ctx, request("lat-2", "web", digest)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled launch: %v", err)
	}
}

func TestHealthFlip(t *testing.T) {
	dir := simDir(t)
	p := open(t, dir, Options{})
	digest := testImage(t, p, "v1", "")
	o, err := p.Launch(t.Context(), request("hf-1", "web", digest))
	if err != nil {
		t.Fatal(err)
	}
	k := hostOf(t, o)
	if err := control(t, dir, k, "POST", "/v1/instances/hf-1/health", map[string]string{"health": "failing"}, nil); err != nil {
		t.Fatal(err)
	}
	if code := get(o.Address); code != 500 {
		t.Errorf("GET of a failing instance: %d, want 500", code)
	}
	if l := listByID(t, p)["hf-1"]; l.Phase != instance.Running {
		t.Errorf("a failing instance is listed %s, want running (its probes judge it)", l.Phase)
	}
	if err := control(t, dir, k, "POST", "/v1/instances/hf-1/health", map[string]string{"health": "healthy"}, nil); err != nil {
		t.Fatal(err)
	}
	if code := get(o.Address); code != 200 {
		t.Errorf("GET of a healed instance: %d, want 200", code)
	}
	if err := control(t, dir, k, "POST", "/v1/instances/hf-1/health", map[string]string{"health": "sick"}, nil); err == nil {
		t.Error("health \"sick\" was taken")
	}

	// The flip rate: 60% per minute of 100 instances is one a second.
	q := open(t, dir, Options{HealthFlipRate: 0.6, Seed: 7})
	var addrs []string
	for i := range 100 {
		o, err := q.Launch(t.Context(), request("hr-"+strconv.Itoa(i), "web", digest))
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, o.Address)
	}
	failing := func() int {
		n := 0
		for _, a := range addrs {
			if get(a) == 500 {
				n++
			}
		}
		return n
	}
	eventually(t, "the flip rate to fail an instance", 30*time.Second, func() bool { return failing() >= 2 })
	t.Logf("%d of 100 instances failing", failing())
}

func TestExitedInstanceIsListedExited(t *testing.T) {
	dir := simDir(t)
	p := open(t, dir, Options{})
	digest := testImage(t, p, "v1", "")
	o, err := p.Launch(t.Context(), request("ex-1", "web", digest))
	if err != nil {
		t.Fatal(err)
	}
	if err := control(t, dir, hostOf(t, o), "POST", "/v1/instances/ex-1/exit", nil, nil); err != nil {
		t.Fatal(err)
	}
	l := listByID(t, p)["ex-1"]
	if l.Phase != instance.Exited || l.ExitReason == "" {
		t.Fatalf("after exit, listed %+v; want exited with a reason", l)
	}
	if code := get(o.Address); code != 0 {
		t.Errorf("an exited instance answered %d", code)
	}
	// Launching the id again finds the exited instance (it is the
	// planner's to replace), and terminating it removes it.
	if again, err := p.Launch(t.Context(), request("ex-1", "web", digest)); err != nil || again.Phase != instance.Exited {
		t.Errorf("launch of the exited id: %+v, %v", again, err)
	}
	if err := p.Terminate(t.Context(), "ex-1", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, ok := listByID(t, p)["ex-1"]; ok {
		t.Error("terminated instance still listed")
	}
	// An image that exits by itself.
	crash := testImage(t, p, "crash", `{"exit_after": "0s"}`)
	if _, err := p.Launch(t.Context(), request("ex-2", "web", crash)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ex-2 to exit", 10*time.Second, func() bool { return listByID(t, p)["ex-2"].Phase == instance.Exited })
}

func TestInstancesSurviveRestart(t *testing.T) {
	dir := simDir(t)
	p := open(t, dir, Options{})
	digest := testImage(t, p, "v1", "")
	want := map[string]instance.Observed{}
	for i := range 5 {
		o, err := p.Launch(t.Context(), request("rs-"+strconv.Itoa(i), "web", digest))
		if err != nil {
			t.Fatal(err)
		}
		want[o.ID] = o
	}
	p.Close()
	q := open(t, dir, Options{}) // the agent restarted
	got := listByID(t, q)
	for id, w := range want {
		if g := got[id]; g.Address != w.Address || g.ImageDigest != w.ImageDigest || g.Phase != instance.Running {
			t.Errorf("after the restart %s is %+v, was %+v", id, g, w)
		}
	}
	// The new provider launches by the imported digest and terminates
	// what the old one launched.
	if _, err := q.Launch(t.Context(), request("rs-new", "web", digest)); err != nil {
		t.Fatal(err)
	}
	for id := range want {
		if err := q.Terminate(t.Context(), id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if l := listByID(t, q); len(l) != 1 {
		t.Errorf("listed %d, want 1", len(l))
	}
}

func TestHostRefusesBadInput(t *testing.T) {
	dir := simDir(t)
	p := open(t, dir, Options{})
	digest := testImage(t, p, "v1", "")
	if _, err := p.Launch(t.Context(), request("ok-1", "web", digest)); err != nil {
		t.Fatal(err)
	}
	good := createRequest{Fleet: "web", ImageDigest: digest, TemplateHash: "abc"}
	for name, c := range map[string]struct {
		path string
		body any
	}{
		"bad id":        {"/v1/instances/-bad", good},
		"long id":       {"/v1/instances/" + strings.Repeat("a", 129), good},
		"bad fleet":     {"/v1/instances/x1", createRequest{Fleet: "Web", ImageDigest: digest, TemplateHash: "abc"}},
		"bad digest":    {"/v1/instances/x2", createRequest{Fleet: "web", ImageDigest: "sha256:zz", TemplateHash: "abc"}},
		"bad template":  {"/v1/instances/x3", createRequest{Fleet: "web", ImageDigest: digest, TemplateHash: "a b"}},
		"unknown field": {"/v1/instances/x4", map[string]any{"fleet": "web", "nope": 1}},
		"huge body":     {"/v1/instances/x5", map[string]string{"fleet": strings.Repeat("a", maxControlBody)}},
	} {
		if err := control(t, dir, 0, "PUT", c.path, c.body, nil); err == nil {
			t.Errorf("%s: taken", name)
		}
	}
	if err := control(t, dir, 0, "POST", "/v1/instances/ok-1/mutate", map[string]string{"path": "../etc"}, nil); err == nil {
		t.Error("mutation path ../etc taken")
	}
	info, err := os.Stat(filepath.Join(dir, "hosts", "0.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if m := info.Mode().Perm(); m != 0o600 {
		t.Errorf("control socket mode %o, want 600", m)
	}
	if info, err := os.Stat(filepath.Join(dir, "hosts")); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("hosts directory: %v, %v; want mode 700", info.Mode(), err)
	}
}

// TestScale launches 20,000 instances across several hosts, lists them
// and checks each host's descriptors stay under the open-file limit.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("20,000 instances")
	}
	const n, capacity, workers = 20000, 6000, 32
	dir := simDir(t)
	p := open(t, dir, Options{HostCapacity: capacity})
	digest := testImage(t, p, "v1", "")
	start := time.Now()
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				if _, err := p.Launch(t.Context(), request(fmt.Sprintf("s-%05d", i), "big", digest)); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	launchTook := time.Since(start)
	if failed.Load() > 0 {
		t.Fatalf("%d launches failed, the first: %v", failed.Load(), firstErr.Load())
	}
	start = time.Now()
	all, err := p.List(t.Context())
	listTook := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Fatalf("listed %d, want %d", len(all), n)
	}
	addrs := map[string]bool{}
	hosts := map[int]int{}
	for _, o := range all {
		if addrs[o.Address] {
			t.Fatalf("address %s twice", o.Address)
		}
		addrs[o.Address] = true
		hosts[hostOf(t, o)]++
	}
	if len(hosts) < 2 {
		t.Fatalf("all on %d host(s): %v", len(hosts), hosts)
	}
	// Every instance answers (one connection at a time, a sample).
	for i := 0; i < n; i += n / 200 {
		if code := get(all[i].Address); code != 200 {
			t.Fatalf("GET %s: %d", all[i].Address, code)
		}
	}
	var rss int64
	for k, pid := range hostPIDs(t, dir) {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		if len(fds) >= 20000 {
			t.Errorf("host %d has %d descriptors", k, len(fds))
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(status)) {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				rss += kb << 10
			}
		}
		t.Logf("host %d (pid %d): %d instances, %d descriptors", k, pid, hosts[k], len(fds))
	}
	t.Logf("%d launches took %s (%.0f/s), List of %d took %s, %d hosts, host RSS %d MiB in all, %d bytes per instance",
		n, launchTook.Round(time.Millisecond), float64(n)/launchTook.Seconds(), n, listTook.Round(time.Millisecond),
		len(hosts), rss>>20, rss/n)

	start = time.Now()
	next.Store(0)
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				if err := p.Terminate(t.Context(), fmt.Sprintf("s-%05d", i), 0); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d terminates failed, the first: %v", failed.Load(), firstErr.Load())
	}
	t.Logf("%d terminates took %s", n, time.Since(start).Round(time.Millisecond))
}
