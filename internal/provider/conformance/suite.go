package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// behaviour is one row of the suite.
type behaviour struct {
	name string
	// why it matters to the reconciler; shown when the behaviour fails.
	why string
	run func(e *env)
}

// behaviours is the suite: what every provider must do against its real
// backend. Each row says what it checks (the comment; rows of one number
// check one behaviour), why it matters to the reconciler (why, shown when the
// row fails) and how it is checked (run). Each row runs as a parallel
// subtest over a fresh state.
var behaviours = []behaviour{
	// 1. Launching an id again (also through a new provider) returns the instance it made.
	{"LaunchIsIdempotent",
		"a retried launch after failover (or a launch journaled twice) must find the instance it already made, not start a second one",
		(*env).launchIsIdempotent},
	// 1. Launches of one id racing through two providers all return one instance.
	{"RacingLaunchesOfOneIDMakeOne",
		"a deposed leader still driving a launch and the new leader re-driving its intent launch the same id at once; both must get the one instance: an error makes the executor retry, and a launch that fails for good makes it terminate the instance the other one made",
		(*env).racingLaunchesMakeOne},
	// 2. Terminate of an id never launched, or terminated already, succeeds.
	{"TerminateOfMissingSucceeds",
		"a retried terminate of an instance that is already gone, or one whose launch never got through, must count as done, or the intent never closes",
		(*env).terminateOfMissingSucceeds},
	// 3. A new provider over the same state lists, and terminates, what the old one launched.
	{"ListAfterRestart",
		"a restarted agent or a new leader rebuilds its view from List alone; an instance it cannot find again is an orphan it cannot terminate",
		(*env).listAfterRestart},
	// 4. ID, Fleet, ImageDigest and TemplateHash come back exactly, at the limits of their formats.
	{"LabelsRoundTrip",
		"the planner matches instances to fleets, images and templates by these fields; a truncated id or fleet makes an instance an orphan, a wrong digest or hash rolls it for nothing",
		(*env).labelsRoundTrip},
	// 5. A file added in place is a DriftMutated finding naming it; clean is nil; gone is ErrGone.
	{"DriftIsReportedWithEvidence",
		"an instance changed in place must be found and replaced, with the changed paths as the evidence of the kill; a clean one must never be, and a vanished one is gone, not a fault",
		(*env).driftIsReportedWithEvidence},
	// 6. A launch of an image the backend lacks fails and leaves nothing.
	{"FailedLaunchOfMissingImageLeavesNothing",
		"a launch that failed is retried or abandoned; anything it left behind would be an orphan, a leaked port or a process nobody watches",
		(*env).failedLaunchOfMissingImage},
	// 6. A launch whose command cannot start fails and leaves nothing.
	{"FailedLaunchOfUnstartableCommandLeavesNothing",
		"a template that cannot start fails the launch; a half-made instance left behind (a created container, a root without a process) is an orphan the next pass must clean up",
		(*env).failedLaunchOfUnstartableCommand},
	// 7. An instance killed from outside is listed Exited with a reason; Terminate cleans it up.
	{"DeadInstanceIsExited",
		"a crashed instance must be seen as exited, with the reason as evidence, so it is replaced now rather than after its probes time out, and terminating it must clean it up",
		(*env).deadInstanceIsExited},
	// 7. An image whose process exits at once gives an Exited instance with a reason.
	{"CrashingInstanceIsExited",
		"an image whose process exits at once is a launched instance that exited, which the planner judges and replaces; it must not look running",
		(*env).crashingInstanceIsExited},
	// 8. Concurrent launches of distinct ids get distinct addresses.
	{"ConcurrentLaunchesGetDistinctAddresses",
		"the executor launches a fleet's surge at once; two instances on one address would make probes and traffic judge one by the other",
		(*env).concurrentLaunches},
	// 9. Terminate sends SIGTERM first, and SIGKILLs one that ignores it after the grace.
	{"TerminateHonoursGrace",
		"instances are drained and stopped with the fleet's stop_grace: a cooperative one must not cost the whole grace, a stubborn one must still be gone soon after it",
		(*env).terminateHonoursGrace},
	// 9. A cancelled Terminate returns the context's error and leaves the instance listed.
	{"CancelledTerminateLeavesInstanceListed",
		"leadership loss cancels every call at once; a cancelled terminate must say so and leave the instance visible, so the next leader's retry finishes the job",
		(*env).cancelledTerminate},
}

// Bounds of the suite's waits. None is a timing claim: each is how long
// the suite waits for a condition before it gives up.
const (
	// callTimeout bounds each behaviour's provider calls.
	callTimeout = 2 * time.Minute
	// settleTimeout bounds waiting for an instance to serve or to be
	// seen as exited.
	settleTimeout = time.Minute
	// leftoverTimeout bounds waiting for the backend's own clean-up
	// after an instance is gone.
	leftoverTimeout = 5 * time.Second
	// killBound is how long after its grace a terminate of an instance
	// that ignores SIGTERM may take (the SIGKILL and the clean-up).
	killBound = 20 * time.Second
	// stubbornGrace is the grace given to an instance that ignores
	// SIGTERM; whole seconds, as some backends round up to them.
	stubbornGrace = 2 * time.Second
	// longGrace is a grace no terminate of a cooperative instance, nor
	// a cancelled one, should wait out; coopTimeout is how long the
	// suite gives a cooperative instance to stop on SIGTERM.
	longGrace   = 10 * time.Minute
	coopTimeout = 30 * time.Second
	// concurrentLaunches is how many instances behaviour 8 launches at once.
	concurrentLaunches = 8
)

// Run runs the suite against the provider h describes, one subtest per
// behaviour, in parallel.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if err := h.check(); err != nil {
		t.Fatalf("conformance: bad harness: %v", err)
	}
	start := time.Now()
	t.Cleanup(func() {
		t.Logf("conformance suite for the %s provider took %s", h.Name, time.Since(start).Round(time.Millisecond))
	})
	nonce := randomHex(3)
	runKnown := os.Getenv(RunKnownFailuresEnv) != ""
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) {
			if why, ok := h.KnownFailures[b.name]; ok && !runKnown {
				t.Skipf("KNOWN FAILURE of the %s provider, listed in its Harness.KnownFailures: %s (set %s=1 to run it)", h.Name, why, RunKnownFailuresEnv)
			}
			t.Parallel()
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("why this behaviour matters: %s", b.why)
				}
			})
			ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
			defer cancel()
			e := &env{t: t, h: &h, ctx: ctx, tag: shortTag(b.name), nonce: nonce}
			e.state = h.NewState(t)
			e.p = h.Open(t, e.state)
			e.fleet = e.fleetName("")
			b.run(e)
		})
	}
}

// env is what one behaviour works with.
type env struct {
	t     *testing.T
	h     *Harness
	ctx   context.Context
	state string
	p     Provider
	fleet string
	tag   string // short form of the behaviour's name
	nonce string // one per Run, so repeated runs never share an id
}

// id returns an instance id unique to the run and the behaviour.
func (e *env) id(n string) string {
	return e.idBase() + n
}

func (e *env) idBase() string {
	base := e.nonce + "-" + e.tag + "-"
	if e.h.Prefix != "" {
		base = e.h.Prefix + "-" + base
	}
	return base
}

// fleetName is a fleet of this behaviour (at most MaxFleetLen).
func (e *env) fleetName(suffix string) string {
	f := e.tag
	if e.h.Prefix != "" {
		f = e.h.Prefix + "-" + f
	}
	if suffix != "" {
		f += "-" + suffix
	}
	if len(f) > MaxFleetLen {
		f = f[:MaxFleetLen]
	}
	return strings.Trim(f, "-")
}

// template is the harness's launch template with args appended.
func (e *env) template(args ...string) instance.Launch {
	l := e.h.Template
	l.Command = slices.Clone(l.Command)
	l.Args = append(slices.Clone(l.Args), args...)
	return l
}

// request is a launch request of the behaviour's fleet.
func (e *env) request(id, digest string, l instance.Launch) instance.LaunchRequest {
	return instance.LaunchRequest{InstanceID: id, Fleet: e.fleet, ImageDigest: digest,
		TemplateHash: instance.TemplateHash(e.h.Name, l), Launch: l}
}

// cleanup makes sure instance id is gone when the behaviour ends, also
// when it failed half-way or the provider misbehaves: a terminate
// through a provider over the state, then the harness's own removal.
func (e *env) cleanup(id string) {
	t, h, state, p := e.t, e.h, e.state, e.p
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := p.Terminate(ctx, id, 0); err != nil {
			t.Logf("cleanup: terminate %s: %v", id, err)
		}
		h.Remove(t, state, id)
	})
}

// launch launches req through p and fails the behaviour on an error.
func (e *env) launch(p Provider, req instance.LaunchRequest) instance.Observed {
	e.t.Helper()
	e.cleanup(req.InstanceID)
	obs, err := p.Launch(e.ctx, req)
	if err != nil {
		e.t.Fatalf("launch %s: %v", req.InstanceID, err)
	}
	return obs
}

// launchHealthy launches the sample app and waits until it serves.
func (e *env) launchHealthy(id string, args ...string) (instance.Observed, instance.LaunchRequest) {
	e.t.Helper()
	req := e.request(id, e.h.Healthy, e.template(args...))
	obs := e.launch(e.p, req)
	e.checkLaunched(obs, req)
	e.waitServing(obs)
	return obs, req
}

// checkLaunched checks what Launch returned against what was asked.
func (e *env) checkLaunched(obs instance.Observed, req instance.LaunchRequest) {
	e.t.Helper()
	if obs.ID != req.InstanceID || obs.Fleet != req.Fleet || obs.ImageDigest != req.ImageDigest || obs.TemplateHash != req.TemplateHash {
		e.t.Fatalf("launch returned id %q fleet %q image %q template %q; launched id %q fleet %q image %q template %q",
			obs.ID, obs.Fleet, obs.ImageDigest, obs.TemplateHash, req.InstanceID, req.Fleet, req.ImageDigest, req.TemplateHash)
	}
	if obs.ProviderRef == "" || obs.Location == "" {
		e.t.Fatalf("launch of %s returned no ProviderRef (%q) or Location (%q)", obs.ID, obs.ProviderRef, obs.Location)
	}
}

// waitServing waits until the instance answers GET /healthz with 200 on
// its Address. The sample app installs its signal handlers before it
// serves, so a serving instance also reacts to SIGTERM as told.
func (e *env) waitServing(obs instance.Observed) {
	e.t.Helper()
	if obs.Address == "" {
		e.t.Fatalf("instance %s has no address: %+v", obs.ID, obs)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	url := "http://" + obs.Address + "/healthz"
	e.eventually("instance "+obs.ID+" to serve "+url, settleTimeout, func() (bool, string) {
		req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err.Error()
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// eventually polls cond until it holds, and fails the behaviour with
// cond's last word when it has not within limit (or the context ends).
func (e *env) eventually(what string, limit time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	wait := 10 * time.Millisecond
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			e.t.Fatalf("gave up waiting for %s after %s: %s", what, limit, last)
		}
		select {
		case <-e.ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// list returns what p lists, by id.
func (e *env) list(p Provider) map[string]instance.Observed {
	e.t.Helper()
	all, err := p.List(e.ctx)
	if err != nil {
		e.t.Fatalf("list: %v", err)
	}
	out := make(map[string]instance.Observed, len(all))
	for _, o := range all {
		if _, dup := out[o.ID]; dup {
			e.t.Fatalf("list has instance %s twice: %+v", o.ID, all)
		}
		out[o.ID] = o
	}
	return out
}

// listed returns instance id as p lists it.
func (e *env) listed(p Provider, id string) (instance.Observed, bool) {
	e.t.Helper()
	o, ok := e.list(p)[id]
	return o, ok
}

// checkGone checks that p does not list id and that the backend holds
// nothing of it. List must not have it at once (the next pass plans from
// it); the backend may finish clean-up of its own (a reaper that records
// an exit takes and removes the instance's lock) a moment later, so the
// suite waits a bounded time for the rest to vanish.
func (e *env) checkGone(p Provider, id string) {
	e.t.Helper()
	if o, ok := e.listed(p, id); ok {
		e.t.Errorf("list still has %s: %+v", id, o)
	}
	deadline := time.Now().Add(leftoverTimeout)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		left := e.h.Leftovers(e.t, e.state, id)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("%s after the instance was gone, the backend still holds %s: %s", leftoverTimeout, id, strings.Join(left, "; "))
			return
		}
		time.Sleep(wait)
	}
}

// checkLive checks how many processes or containers of id are alive.
func (e *env) checkLive(id string, want int) {
	e.t.Helper()
	if n := e.h.Live(e.t, e.state, id); n != want {
		e.t.Errorf("%d live processes/containers of %s on the backend, want %d", n, id, want)
	}
}

// terminate terminates id through p and fails the behaviour on an error.
func (e *env) terminate(p Provider, id string, grace time.Duration) {
	e.t.Helper()
	if err := p.Terminate(e.ctx, id, grace); err != nil {
		e.t.Fatalf("terminate %s: %v", id, err)
	}
}

// sameInstance reports how b differs from a as the same instance.
func sameInstance(a, b instance.Observed) string {
	var d []string
	for _, f := range []struct{ name, a, b string }{
		{"ID", a.ID, b.ID}, {"Fleet", a.Fleet, b.Fleet}, {"ImageDigest", a.ImageDigest, b.ImageDigest},
		{"TemplateHash", a.TemplateHash, b.TemplateHash}, {"ProviderRef", a.ProviderRef, b.ProviderRef},
		{"Location", a.Location, b.Location}, {"Address", a.Address, b.Address},
	} {
		if f.a != f.b {
			d = append(d, fmt.Sprintf("%s %q != %q", f.name, f.a, f.b))
		}
	}
	return strings.Join(d, ", ")
}

// 1. Launch is idempotent by instance id.
func (e *env) launchIsIdempotent() {
	t := e.t
	first, req := e.launchHealthy(e.id("1"))

	again := e.launch(e.p, req)
	if d := sameInstance(first, again); d != "" || again.Phase != instance.Running {
		t.Errorf("second launch of %s: %s, phase %s; want the first instance, running", req.InstanceID, d, again.Phase)
	}
	// Another agent over the same state (a new leader) retries the launch.
	other := e.h.Open(t, e.state)
	retried := e.launch(other, req)
	if d := sameInstance(first, retried); d != "" {
		t.Errorf("launch of %s by a new provider over the same state: %s; want the first instance", req.InstanceID, d)
	}
	e.checkLive(req.InstanceID, 1)
	if o, ok := e.listed(e.p, req.InstanceID); !ok || o.Phase != instance.Running {
		t.Errorf("list: %s %+v (found %v), want it running", req.InstanceID, o, ok)
	}
}

// 1. Launches of one id racing through two providers make one instance.
func (e *env) racingLaunchesMakeOne() {
	t := e.t
	other := e.h.Open(t, e.state)
	req := e.request(e.id("1"), e.h.Healthy, e.template())
	e.cleanup(req.InstanceID)
	const racers = 4
	results := make([]instance.Observed, racers)
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		p := e.p
		if i%2 == 1 {
			p = other
		}
		wg.Go(func() { results[i], errs[i] = p.Launch(e.ctx, req) })
	}
	wg.Wait()
	var failed []string
	for i := range racers {
		if errs[i] != nil {
			failed = append(failed, fmt.Sprintf("launch %d: %v", i, errs[i]))
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d concurrent launches of %s failed:\n%s", len(failed), racers, req.InstanceID, strings.Join(failed, "\n"))
	}
	for i := range racers {
		if d := sameInstance(results[0], results[i]); d != "" {
			t.Errorf("concurrent launches of %s returned different instances: %s", req.InstanceID, d)
		}
	}
	e.waitServing(results[0])
	e.checkLive(req.InstanceID, 1)
	e.terminate(e.p, req.InstanceID, time.Second)
	e.checkGone(e.p, req.InstanceID)
}

// 2. Terminate of a missing instance succeeds.
func (e *env) terminateOfMissingSucceeds() {
	never := e.id("never")
	e.cleanup(never)
	e.terminate(e.p, never, time.Second)
	e.checkGone(e.p, never)

	obs, _ := e.launchHealthy(e.id("1"))
	e.terminate(e.p, obs.ID, time.Second)
	e.checkGone(e.p, obs.ID)
	e.terminate(e.p, obs.ID, time.Second)
	// Also when the retry comes from another agent.
	e.terminate(e.h.Open(e.t, e.state), obs.ID, time.Second)
	e.checkGone(e.p, obs.ID)
}

// 3. List finds every instance again after an agent restart.
func (e *env) listAfterRestart() {
	t := e.t
	launched := map[string]instance.Observed{}
	for _, n := range []string{"1", "2", "3"} {
		obs, _ := e.launchHealthy(e.id(n))
		launched[obs.ID] = obs
	}
	restarted := e.h.Open(t, e.state)
	listed := e.list(restarted)
	for id, want := range launched {
		got, ok := listed[id]
		if !ok {
			t.Errorf("after the restart, list lacks %s", id)
			continue
		}
		if d := sameInstance(want, got); d != "" || got.Phase != instance.Running {
			t.Errorf("after the restart, %s is listed as %+v: %s (phase %s); want it as launched, running", id, got, d, got.Phase)
		}
	}
	for id, o := range listed {
		if o.Fleet == e.fleet && launched[id].ID == "" {
			t.Errorf("after the restart, list has %s of the fleet, which was never launched: %+v", id, o)
		}
	}
	for id := range launched {
		e.terminate(restarted, id, time.Second)
	}
	for id := range launched {
		e.checkGone(restarted, id)
		e.checkGone(e.p, id)
	}
}

// longID is an id of MaxIDLen characters starting with base, using
// every character class the id format allows.
func longID(base string) string { return fillTo(base, "Az09._-", 'Z', MaxIDLen) }

// longFleet is a fleet name of MaxFleetLen characters starting with base.
func longFleet(base string) string { return fillTo(base, "f0-", '9', MaxFleetLen) }

// fillTo pads base with fill, cycled, to n-1 characters and ends it with
// last (ids and fleet names may not end in a separator).
func fillTo(base, fill string, last byte, n int) string {
	var b strings.Builder
	b.WriteString(base)
	for i := 0; b.Len() < n-1; i++ {
		b.WriteByte(fill[i%len(fill)])
	}
	b.WriteByte(last)
	return b.String()
}

// 4. Ids, fleets, digests and template hashes round-trip exactly.
func (e *env) labelsRoundTrip() {
	t := e.t
	type tc struct{ what, id, fleet string }
	cases := []tc{
		{"longest id, longest fleet", longID(e.idBase()), longFleet(e.fleet + "-")},
		{"id with every character class, one-character fleet", e.id("A.b_C-9"), "z"},
	}
	if e.h.Prefix == "" {
		cases = append(cases, tc{"one-character id and fleet", "Q", "0"})
	}
	var reqs []instance.LaunchRequest
	for i, c := range cases {
		if instance.CheckID(c.id) != nil || len(c.id) > MaxIDLen || !validFleet.MatchString(c.fleet) {
			t.Fatalf("suite bug: %s: id %q (%d) or fleet %q (%d) is not of the formats", c.what, c.id, len(c.id), c.fleet, len(c.fleet))
		}
		l := e.template()
		l.Env = mapsWith(l.Env, "CONFORMANCE_CASE", fmt.Sprint(i)) // a template hash of its own
		req := instance.LaunchRequest{InstanceID: c.id, Fleet: c.fleet, ImageDigest: e.h.Healthy,
			TemplateHash: instance.TemplateHash(e.h.Name, l), Launch: l}
		obs := e.launch(e.p, req)
		e.checkLaunched(obs, req)
		reqs = append(reqs, req)
	}
	for _, p := range []Provider{e.p, e.h.Open(t, e.state)} {
		listed := e.list(p)
		for i, req := range reqs {
			o, ok := listed[req.InstanceID]
			if !ok {
				t.Errorf("%s: list lacks %q (%d characters)", cases[i].what, req.InstanceID, len(req.InstanceID))
				continue
			}
			if o.Fleet != req.Fleet || o.ImageDigest != req.ImageDigest || o.TemplateHash != req.TemplateHash {
				t.Errorf("%s: listed fleet %q image %q template %q; launched fleet %q image %q template %q",
					cases[i].what, o.Fleet, o.ImageDigest, o.TemplateHash, req.Fleet, req.ImageDigest, req.TemplateHash)
			}
		}
	}
	for _, req := range reqs {
		e.terminate(e.p, req.InstanceID, time.Second)
		e.checkGone(e.p, req.InstanceID)
	}
}

func mapsWith(m map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for mk, mv := range m {
		out[mk] = mv
	}
	out[k] = v
	return out
}

// 5. Drift is reported with evidence.
func (e *env) driftIsReportedWithEvidence() {
	t := e.t
	di, ok := e.p.(DriftInspector)
	if !ok {
		t.Fatalf("the %s provider (%T) has no Inspect method: it cannot report drift", e.h.Name, e.p)
	}
	obs, _ := e.launchHealthy(e.id("1"))
	if f, err := di.Inspect(e.ctx, obs, nil); err != nil || f != nil {
		t.Fatalf("inspect of an unchanged instance: finding %+v, error %v; want nil, nil", f, err)
	}
	const name = "conformance-drift.txt"
	path := e.h.Mutate(t, e.state, obs, name)
	f, err := di.Inspect(e.ctx, obs, nil)
	if err != nil {
		t.Fatalf("inspect after adding %s: %v", path, err)
	}
	if want := "added " + path; f == nil || f.Kind != instance.DriftMutated || !slices.Contains(f.Evidence, want) {
		t.Fatalf("inspect after adding %s: finding %+v; want kind %q with evidence %q", path, f, instance.DriftMutated, want)
	}
	// The added file is all that differs: ignoring it leaves no finding.
	if f, err := di.Inspect(e.ctx, obs, []string{name}); err != nil || f != nil {
		t.Errorf("inspect ignoring %s: finding %+v, error %v; want nil, nil", name, f, err)
	}
	e.terminate(e.p, obs.ID, time.Second)
	if f, err := di.Inspect(e.ctx, obs, nil); !errors.Is(err, instance.ErrGone) {
		t.Errorf("inspect of a terminated instance: finding %+v, error %v; want an error wrapping instance.ErrGone", f, err)
	}
}

// 6. A launch of an image the backend does not have fails and leaves
// nothing behind.
func (e *env) failedLaunchOfMissingImage() {
	req := e.request(e.id("1"), e.h.Missing, e.template())
	e.cleanup(req.InstanceID)
	if obs, err := e.p.Launch(e.ctx, req); err == nil {
		e.t.Fatalf("launch of missing image %s succeeded: %+v", req.ImageDigest, obs)
	}
	e.checkGone(e.p, req.InstanceID)
	e.checkLive(req.InstanceID, 0)
}

// 6. A launch whose command cannot start fails and leaves nothing behind.
func (e *env) failedLaunchOfUnstartableCommand() {
	l := e.template()
	l.Command = []string{"/nonexistent/immutd-conformance-no-such-command"}
	req := e.request(e.id("1"), e.h.Healthy, l)
	e.cleanup(req.InstanceID)
	if obs, err := e.p.Launch(e.ctx, req); err == nil {
		e.t.Fatalf("launch of command %q succeeded: %+v", l.Command, obs)
	}
	e.checkGone(e.p, req.InstanceID)
	e.checkLive(req.InstanceID, 0)
}

// waitExited waits until p lists id as exited, and checks its reason.
func (e *env) waitExited(p Provider, id string) instance.Observed {
	e.t.Helper()
	var got instance.Observed
	e.eventually(id+" to be listed as exited", settleTimeout, func() (bool, string) {
		o, ok := e.listed(p, id)
		got = o
		return ok && o.Phase == instance.Exited, fmt.Sprintf("listed %v: %+v", ok, o)
	})
	if got.ExitReason == "" {
		e.t.Errorf("%s is listed as exited without an exit reason: %+v", id, got)
	}
	return got
}

// 7. An instance whose process dies is listed as exited.
func (e *env) deadInstanceIsExited() {
	obs, _ := e.launchHealthy(e.id("1"))
	e.h.Kill(e.t, e.state, obs)
	got := e.waitExited(e.p, obs.ID)
	e.t.Logf("killed instance listed as exited: %q", got.ExitReason)
	// An agent that did not launch it sees it the same way.
	e.waitExited(e.h.Open(e.t, e.state), obs.ID)
	e.terminate(e.p, obs.ID, time.Second)
	e.checkGone(e.p, obs.ID)
}

// 7. An image whose process exits at once gives an exited instance.
func (e *env) crashingInstanceIsExited() {
	req := e.request(e.id("1"), e.h.Crashing, e.template())
	obs := e.launch(e.p, req)
	e.checkLaunched(obs, req)
	got := e.waitExited(e.p, obs.ID)
	e.t.Logf("crashing instance listed as exited: %q", got.ExitReason)
	e.checkLive(obs.ID, 0)
	e.terminate(e.p, obs.ID, time.Second)
	e.checkGone(e.p, obs.ID)
}

// 8. Concurrent launches of distinct ids get distinct addresses.
func (e *env) concurrentLaunches() {
	t := e.t
	reqs := make([]instance.LaunchRequest, concurrentLaunches)
	results := make([]instance.Observed, concurrentLaunches)
	errs := make([]error, concurrentLaunches)
	for i := range reqs {
		reqs[i] = e.request(e.id(fmt.Sprint(i)), e.h.Healthy, e.template())
		e.cleanup(reqs[i].InstanceID)
	}
	var wg sync.WaitGroup
	for i := range reqs {
		wg.Go(func() { results[i], errs[i] = e.p.Launch(e.ctx, reqs[i]) })
	}
	wg.Wait()
	byAddr := map[string]string{}
	for i, obs := range results {
		if errs[i] != nil {
			t.Fatalf("concurrent launch of %s: %v", reqs[i].InstanceID, errs[i])
		}
		e.checkLaunched(obs, reqs[i])
		if other, dup := byAddr[obs.Address]; dup {
			t.Errorf("%s and %s got the same address %q", other, obs.ID, obs.Address)
		}
		byAddr[obs.Address] = obs.ID
	}
	for _, obs := range results {
		e.waitServing(obs)
	}
	listed := e.list(e.p)
	for _, obs := range results {
		if o := listed[obs.ID]; o.Phase != instance.Running || o.Address != obs.Address {
			t.Errorf("%s listed as %+v, launched at %s", obs.ID, o, obs.Address)
		}
	}
	errs = make([]error, concurrentLaunches)
	for i := range reqs {
		wg.Go(func() { errs[i] = e.p.Terminate(e.ctx, reqs[i].InstanceID, time.Second) })
	}
	wg.Wait()
	for i := range reqs {
		if errs[i] != nil {
			t.Errorf("concurrent terminate of %s: %v", reqs[i].InstanceID, errs[i])
		}
		e.checkGone(e.p, reqs[i].InstanceID)
	}
}

// 9. Terminate honours its grace.
func (e *env) terminateHonoursGrace() {
	t := e.t
	// A cooperative instance stops on SIGTERM: the grace is not waited out.
	coop, _ := e.launchHealthy(e.id("coop"))
	ctx, cancel := context.WithTimeout(e.ctx, coopTimeout)
	defer cancel()
	if err := e.p.Terminate(ctx, coop.ID, longGrace); err != nil {
		t.Fatalf("terminate with a grace of %s of an instance that stops on SIGTERM: %v; want it done within %s, not after the grace", longGrace, err, coopTimeout)
	}
	e.checkGone(e.p, coop.ID)

	// One that ignores SIGTERM is killed once the grace has passed.
	stub, _ := e.launchHealthy(e.id("stub"), "-ignore-sigterm")
	start := time.Now()
	e.terminate(e.p, stub.ID, stubbornGrace)
	took := time.Since(start)
	t.Logf("terminate with grace %s of an instance ignoring SIGTERM took %s", stubbornGrace, took.Round(time.Millisecond))
	if took < stubbornGrace {
		t.Errorf("terminate of an instance that ignores SIGTERM returned after %s, before its grace of %s: it did not wait for the grace", took, stubbornGrace)
	}
	if took > stubbornGrace+killBound {
		t.Errorf("terminate of an instance that ignores SIGTERM took %s, more than its grace %s plus %s", took, stubbornGrace, killBound)
	}
	e.checkLive(stub.ID, 0)
	e.checkGone(e.p, stub.ID)
}

// 9. A terminate whose context ends early returns the context's error and
// leaves the instance listed; a retry finishes it.
func (e *env) cancelledTerminate() {
	t := e.t
	obs, _ := e.launchHealthy(e.id("1"), "-ignore-sigterm")
	ctx, cancel := context.WithTimeout(e.ctx, 500*time.Millisecond)
	defer cancel()
	err := e.p.Terminate(ctx, obs.ID, longGrace)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("terminate with a context that ended after 500ms of a grace of %s: %v; want an error wrapping %v", longGrace, err, context.DeadlineExceeded)
	}
	if o, ok := e.listed(e.p, obs.ID); !ok {
		t.Errorf("after the cancelled terminate, list lacks %s", obs.ID)
	} else {
		t.Logf("after the cancelled terminate %s is listed %s %q", obs.ID, o.Phase, o.ExitReason)
	}
	// The next leader's retry.
	e.terminate(e.h.Open(t, e.state), obs.ID, time.Second)
	e.checkLive(obs.ID, 0)
	e.checkGone(e.p, obs.ID)
}

// shortTag abbreviates a behaviour's name for ids and fleets: its
// capitals, lower-cased ("LaunchIsIdempotent" -> "lii").
func shortTag(name string) string {
	var b strings.Builder
	for _, r := range name {
		if r >= 'A' && r <= 'Z' {
			b.WriteRune(r + 'a' - 'A')
		}
	}
	return b.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("conformance: crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}
