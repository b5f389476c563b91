package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/pathmatch"
)

func TestResolve(t *testing.T) {
	p := needEngine(t)
	ctx := testCtx(t)
	got, err := p.Resolve(ctx, tagV1)
	if err != nil {
		t.Fatal(err)
	}
	if got != imageV1 || !strings.HasPrefix(got, "sha256:") {
		t.Fatalf("Resolve(%s) = %s, want %s", tagV1, got, imageV1)
	}
	if got, err := p.Resolve(ctx, imageV1); err != nil || got != imageV1 {
		t.Fatalf("Resolve(image id) = %s, %v", got, err)
	}

	missing := runID + "/nothing:1"
	_, err = p.Resolve(ctx, missing)
	if !errors.Is(err, ErrImageNotFound) {
		t.Fatalf("Resolve(%s) error = %v, want ErrImageNotFound", missing, err)
	}
	if want := fmt.Sprintf("docker: image %q not found on the engine at %s", missing, p.Host()); err.Error() != want {
		t.Fatalf("error text\n got %q\nwant %q", err, want)
	}

	// A tag moved to other content resolves to the other image.
	moving := runID + "/sampleapp:moving"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if _, err := p.cli.ImageRemove(ctx, moving, image.RemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			t.Errorf("cleanup: untag %s: %v", moving, err)
		}
	})
	if err := p.cli.ImageTag(ctx, imageV1, moving); err != nil {
		t.Fatal(err)
	}
	first, err := p.Resolve(ctx, moving)
	if err != nil || first != imageV1 {
		t.Fatalf("Resolve(%s) = %s, %v; want %s", moving, first, err, imageV1)
	}
	if err := p.cli.ImageTag(ctx, imageV2, moving); err != nil {
		t.Fatal(err)
	}
	second, err := p.Resolve(ctx, moving)
	if err != nil || second != imageV2 || second == first {
		t.Fatalf("Resolve(%s) after moving the tag = %s, %v; want %s (not %s)", moving, second, err, imageV2, first)
	}
}

func TestLaunchBridge(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	id := fleet + "-1"
	req := request(fleet, id, instance.Launch{
		Env: map[string]string{"GREETING": "hi", "PORT": "1"}, // PORT is the provider's
		Docker: &instance.DockerLaunch{
			Port: 8080, NetworkMode: "bridge", ReadOnly: true,
			MemoryBytes: 64 << 20, NanoCPUs: 500_000_000,
		},
	})
	obs := launch(t, p, req)
	if obs.ID != id || obs.Fleet != fleet || obs.Phase != instance.Running || obs.ImageDigest != imageV1 ||
		obs.TemplateHash != "tmpl-1" || obs.Location != "immutd-"+id || obs.ProviderRef == "" || obs.StartedAt.IsZero() {
		t.Fatalf("observed %+v", obs)
	}
	host, port, err := net.SplitHostPort(obs.Address)
	if err != nil || host != "127.0.0.1" || port == "" || port == "0" {
		t.Fatalf("address %q: want 127.0.0.1:<engine-picked port>", obs.Address)
	}

	body := httpGet(t, obs.Address, "/")
	for _, want := range []string{"sampleapp 1.0.0\n", "instance: " + id + "\n", "fleet: " + fleet + "\n",
		"image: " + imageV1 + "\n", `greeting = "hello from v1"`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / body %q lacks %q", body, want)
		}
	}

	c, err := p.cli.ContainerInspect(testCtx(t), obs.ProviderRef)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{LabelManaged: "true", LabelFleet: fleet, LabelInstance: id, LabelImage: imageV1, LabelTemplate: "tmpl-1"} {
		if c.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Config.Labels[k], v)
		}
	}
	for _, kv := range []string{"GREETING=hi", "PORT=8080", "IMMUTD_INSTANCE_ID=" + id, "IMMUTD_FLEET=" + fleet, "IMMUTD_IMAGE_DIGEST=" + imageV1} {
		if !slices.Contains(c.Config.Env, kv) {
			t.Errorf("env %q lacks %q", c.Config.Env, kv)
		}
	}
	hc := c.HostConfig
	if !hc.ReadonlyRootfs || hc.Memory != 64<<20 || hc.NanoCPUs != 500_000_000 || hc.RestartPolicy.Name != container.RestartPolicyDisabled {
		t.Errorf("host config: read-only %v, memory %d, nano cpus %d, restart %q", hc.ReadonlyRootfs, hc.Memory, hc.NanoCPUs, hc.RestartPolicy.Name)
	}
	for cp, bs := range hc.PortBindings {
		for _, b := range bs {
			if b.HostIP != "127.0.0.1" {
				t.Errorf("port %s published on %q, want 127.0.0.1", cp, b.HostIP)
			}
		}
	}

	// A retried launch finds the container; there is still only one.
	again := launch(t, p, req)
	if again.ProviderRef != obs.ProviderRef || again.Address != obs.Address || again.Phase != instance.Running {
		t.Fatalf("relaunch = %+v, want the first container %+v", again, obs)
	}
	cs, err := p.cli.ContainerList(testCtx(t), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelInstance+"="+id))})
	if err != nil || len(cs) != 1 {
		t.Fatalf("containers for %s: %d, %v; want 1", id, len(cs), err)
	}

	listed, ok := findObserved(t, p, id)
	if !ok {
		t.Fatalf("List lacks %s", id)
	}
	if listed.Phase != instance.Running || listed.Address != obs.Address || listed.ImageDigest != imageV1 ||
		listed.TemplateHash != "tmpl-1" || listed.Fleet != fleet || listed.ProviderRef != obs.ProviderRef || !listed.StartedAt.Equal(obs.StartedAt) {
		t.Fatalf("listed %+v, launched %+v", listed, obs)
	}
}

func TestLaunchHostNetwork(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	id := fleet + "-1"
	// The app listens on $HOST:$PORT; on the host's network it must stay
	// on loopback.
	obs := launch(t, p, request(fleet, id, instance.Launch{
		Env:    map[string]string{"HOST": "127.0.0.1"},
		Docker: &instance.DockerLaunch{NetworkMode: "host"},
	}))
	host, port, err := net.SplitHostPort(obs.Address)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("address %q", obs.Address)
	}
	if body := httpGet(t, obs.Address, "/"); !strings.Contains(body, "instance: "+id) {
		t.Fatalf("GET / = %q", body)
	}
	c, err := p.cli.ContainerInspect(testCtx(t), obs.ProviderRef)
	if err != nil {
		t.Fatal(err)
	}
	if !c.HostConfig.NetworkMode.IsHost() || !slices.Contains(c.Config.Env, "PORT="+port) {
		t.Fatalf("network mode %q, env %q; want host and PORT=%s", c.HostConfig.NetworkMode, c.Config.Env, port)
	}
	if listed, ok := findObserved(t, p, id); !ok || listed.Address != obs.Address {
		t.Fatalf("listed %+v, want address %s", listed, obs.Address)
	}
}

func TestLaunchStartsCreatedContainer(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	id := fleet + "-1"
	req := request(fleet, id, instance.Launch{})
	// What a launch interrupted between create and start leaves behind.
	nw, err := networkOf(req.Launch.Docker)
	if err != nil {
		t.Fatal(err)
	}
	cfg, hcfg := p.containerConfig(req, nw, 0)
	created, err := p.cli.ContainerCreate(testCtx(t), cfg, hcfg, nil, nil, containerName(id))
	if err != nil {
		t.Fatal(err)
	}
	listed, ok := findObserved(t, p, id)
	if !ok || listed.Phase != instance.Exited || listed.ExitReason != "created, never started" || listed.Address != "" {
		t.Fatalf("listed %+v (found %v), want exited, created, never started", listed, ok)
	}
	obs := launch(t, p, req)
	if obs.ProviderRef != created.ID || obs.Phase != instance.Running {
		t.Fatalf("launch = %+v, want the created container %s running", obs, created.ID)
	}
	httpGet(t, obs.Address, "/healthz")
}

func TestLaunchCommandAndArgs(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)

	// Args only: the image's entrypoint with the args as its command.
	a := launch(t, p, request(fleet, fleet+"-args", instance.Launch{Args: []string{"-fail-after", "1h"}}))
	// Command and args: the command replaces the entrypoint.
	b := launch(t, p, request(fleet, fleet+"-cmd", instance.Launch{Command: []string{"/bin/sampleapp", "-ignore-sigterm"}, Args: []string{"-fail-after", "2h"}}))
	for _, tc := range []struct {
		obs        instance.Observed
		entrypoint []string
		cmd        []string
	}{
		{a, []string{"/bin/sampleapp"}, []string{"-fail-after", "1h"}},
		{b, []string{"/bin/sampleapp", "-ignore-sigterm"}, []string{"-fail-after", "2h"}},
	} {
		c, err := p.cli.ContainerInspect(testCtx(t), tc.obs.ProviderRef)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(c.Config.Entrypoint, tc.entrypoint) || !slices.Equal(c.Config.Cmd, tc.cmd) {
			t.Errorf("%s: entrypoint %q cmd %q, want %q %q", tc.obs.ID, c.Config.Entrypoint, c.Config.Cmd, tc.entrypoint, tc.cmd)
		}
		httpGet(t, tc.obs.Address, "/healthz")
	}

	// An app that ignores SIGTERM is killed when the grace runs out.
	if err := p.Terminate(testCtx(t), b.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli.ContainerInspect(testCtx(t), b.ProviderRef); !cerrdefs.IsNotFound(err) {
		t.Fatalf("container after terminate: %v, want not found", err)
	}
}

func TestLaunchRefusesForeignContainer(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	id := fleet + "-1"
	t.Cleanup(func() { removeContainers(t, p, filters.Arg("label", testRunLabel+"="+runID+"-"+id)) })
	// A container that took the instance's name without immutd's labels.
	foreign, err := p.cli.ContainerCreate(testCtx(t), &container.Config{Image: imageV1, Labels: map[string]string{testRunLabel: runID + "-" + id}},
		&container.HostConfig{}, nil, nil, containerName(id))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Launch(testCtx(t), request(fleet, id, instance.Launch{})); err == nil || !strings.Contains(err.Error(), "is not immutd's container") {
		t.Fatalf("launch over a foreign container: %v", err)
	}
	if err := p.Terminate(testCtx(t), id, time.Second); err == nil || !strings.Contains(err.Error(), "is not immutd's container") {
		t.Fatalf("terminate of a foreign container: %v", err)
	}
	if _, err := p.cli.ContainerInspect(testCtx(t), foreign.ID); err != nil {
		t.Fatalf("the foreign container is gone: %v", err)
	}
}

func TestLaunchMissingImage(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	req := request(fleet, fleet+"-1", instance.Launch{})
	req.ImageDigest = "sha256:" + strings.Repeat("0", 64)
	_, err := p.Launch(testCtx(t), req)
	if err == nil || !strings.HasPrefix(err.Error(), "docker: launch "+req.InstanceID+": image sha256:000") {
		t.Fatalf("launch of a missing image: %v", err)
	}
}

func TestListExited(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	killed := launch(t, p, request(fleet, fleet+"-killed", instance.Launch{}))
	// A command that fails at once: sampleapp exits 2 on a bad flag.
	failed := launch(t, p, request(fleet, fleet+"-failed", instance.Launch{Args: []string{"-no-such-flag"}}))
	if err := p.cli.ContainerKill(testCtx(t), killed.ProviderRef, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{killed.ID: "exited with code 137", failed.ID: "exited with code 2"}
	waitFor(t, "both containers to be listed as exited", func() (bool, error) {
		all, err := p.List(testCtx(t))
		if err != nil {
			return false, err
		}
		got := map[string]string{}
		for _, o := range all {
			if o.Fleet == fleet && o.Phase == instance.Exited {
				got[o.ID] = o.ExitReason
			}
		}
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Errorf("exited: %v", got)
	})
}

func TestPhaseOf(t *testing.T) {
	cases := []struct {
		state  container.State
		phase  instance.Phase
		reason string
	}{
		{container.State{Status: container.StateRunning, Running: true}, instance.Running, ""},
		{container.State{Status: container.StatePaused, Running: true, Paused: true}, instance.Running, ""},
		{container.State{Status: container.StateExited, ExitCode: 137}, instance.Exited, "exited with code 137"},
		{container.State{Status: container.StateExited, ExitCode: 0}, instance.Exited, "exited with code 0"},
		{container.State{Status: container.StateExited, ExitCode: 137, OOMKilled: true}, instance.Exited, "oom_killed"},
		{container.State{Status: container.StateDead, Dead: true, ExitCode: 1}, instance.Exited, "dead"},
		{container.State{Status: container.StateCreated}, instance.Exited, "created, never started"},
		{container.State{Status: container.StateCreated, ExitCode: 127, Error: "exec: \"/x\": no such file"}, instance.Exited, "created, never started: exec: \"/x\": no such file"},
		{container.State{Status: container.StateRemoving}, instance.Exited, "removing"},
	}
	for _, tc := range cases {
		phase, reason := phaseOf(&tc.state)
		if phase != tc.phase || reason != tc.reason {
			t.Errorf("%+v: %s %q, want %s %q", tc.state, phase, reason, tc.phase, tc.reason)
		}
	}
}

func TestTerminate(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	obs := launch(t, p, request(fleet, fleet+"-1", instance.Launch{}))
	if err := p.Terminate(testCtx(t), obs.ID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli.ContainerInspect(testCtx(t), obs.ProviderRef); !cerrdefs.IsNotFound(err) {
		t.Fatalf("container after terminate: %v, want not found", err)
	}
	if _, ok := findObserved(t, p, obs.ID); ok {
		t.Fatal("List still has the terminated instance")
	}
	// Gone already, never existed: success.
	for _, id := range []string{obs.ID, fleet + "-never"} {
		if err := p.Terminate(testCtx(t), id, time.Second); err != nil {
			t.Fatalf("terminate %s: %v", id, err)
		}
	}
	// An exited container is removed too.
	exited := launch(t, p, request(fleet, fleet+"-2", instance.Launch{Args: []string{"-no-such-flag"}}))
	if err := p.Terminate(testCtx(t), exited.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli.ContainerInspect(testCtx(t), exited.ProviderRef); !cerrdefs.IsNotFound(err) {
		t.Fatalf("exited container after terminate: %v, want not found", err)
	}
	if err := p.Terminate(testCtx(t), "../bad", time.Second); err == nil {
		t.Fatal("terminate accepted a bad id")
	}
}

func TestStopSeconds(t *testing.T) {
	for _, tc := range []struct {
		grace time.Duration
		want  int
	}{{0, 1}, {-time.Second, 1}, {time.Millisecond, 1}, {time.Second, 1}, {1500 * time.Millisecond, 2}, {10 * time.Second, 10}} {
		if got := stopSeconds(tc.grace); got != tc.want {
			t.Errorf("stopSeconds(%s) = %d, want %d", tc.grace, got, tc.want)
		}
	}
}

func TestInspect(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	obs := launch(t, p, request(fleet, fleet+"-1", instance.Launch{}))
	httpGet(t, obs.Address, "/healthz")
	ctx := testCtx(t)
	if f, err := p.Inspect(ctx, obs, nil); err != nil || f != nil {
		t.Fatalf("fresh container: finding %+v, %v; want none", f, err)
	}

	// `docker exec`: the app binary itself edits its config in place.
	if code, out := execIn(t, p, obs.ProviderRef, "0", "/bin/sampleapp", "-write-file", "/config/app.conf", "-content", "greeting = \"pwned\"\n"); code != 0 {
		t.Fatalf("exec exit code %d: %s", code, out)
	}
	f, err := p.Inspect(ctx, obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"modified /config/app.conf"}; f == nil || f.Kind != instance.DriftMutated || !slices.Equal(f.Evidence, want) {
		t.Fatalf("after exec: finding %+v, want mutated %q", f, want)
	}
	if body := httpGet(t, obs.Address, "/"); !strings.Contains(body, "pwned") {
		t.Fatalf("the edit did not reach the app: %q", body)
	}

	// `docker cp`: a new file, and one under an ignored directory.
	copyInto(t, p, obs.ProviderRef, [][2]string{{"evil.sh", "#!/bin/sh\n"}, {"cache/", ""}, {"cache/blob", "x"}})
	f, err = p.Inspect(ctx, obs, []string{"cache/**"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"modified /config/app.conf", "added /evil.sh"}; f == nil || !slices.Equal(f.Evidence, want) {
		t.Fatalf("after cp: finding %+v, want %q", f, want)
	}
	f, err = p.Inspect(ctx, obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"added /cache", "added /cache/blob", "modified /config/app.conf", "added /evil.sh"}; f == nil || !slices.Equal(f.Evidence, want) {
		t.Fatalf("without ignore patterns: finding %+v, want %q", f, want)
	}
	// Everything ignored: clean.
	if f, err := p.Inspect(ctx, obs, []string{"cache", "config/*.conf", "/evil.sh"}); err != nil || f != nil {
		t.Fatalf("all ignored: finding %+v, %v", f, err)
	}
	// By name when the caller has no container id.
	byName := obs
	byName.ProviderRef = ""
	if f, err := p.Inspect(ctx, byName, []string{"cache/**"}); err != nil || f == nil || len(f.Evidence) != 2 {
		t.Fatalf("by name: finding %+v, %v", f, err)
	}
	if _, err := p.Inspect(ctx, obs, []string{"a/../b"}); err == nil {
		t.Fatal("bad ignore pattern accepted")
	}

	if err := p.Terminate(ctx, obs.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Inspect(ctx, obs, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("inspect of a terminated instance: %v, want ErrNotFound", err)
	}
}

func TestChangeEvidence(t *testing.T) {
	ch := func(kind container.ChangeType, path string) container.FilesystemChange {
		return container.FilesystemChange{Kind: kind, Path: path}
	}
	changes := []container.FilesystemChange{
		ch(container.ChangeModify, "/config"),
		ch(container.ChangeModify, "/config/app.conf"),
		ch(container.ChangeModify, "/etc"), // changed itself: nothing beneath it changed
		ch(container.ChangeAdd, "/var"),
		ch(container.ChangeAdd, "/var/log"),
		ch(container.ChangeAdd, "/var/log/x.log"),
		ch(container.ChangeModify, "/bin"),
		ch(container.ChangeDelete, "/bin/y"),
		ch(container.ChangeModify, "/tmp"),
		ch(container.ChangeAdd, "/tmp/scratch"),
	}
	ign, err := pathmatch.Compile([]string{"tmp/**", "var/log/*.log"})
	if err != nil {
		t.Fatal(err)
	}
	got := changeEvidence(changes, ign)
	want := []string{"removed /bin/y", "modified /config/app.conf", "modified /etc", "added /var", "added /var/log"}
	if !slices.Equal(got, want) {
		t.Fatalf("evidence\n got %q\nwant %q", got, want)
	}
	if got := changeEvidence(nil, nil); len(got) != 0 {
		t.Fatalf("no changes: %q", got)
	}

	// Capped at 20 items plus a count.
	var many []container.FilesystemChange
	for i := 0; i < 25; i++ {
		many = append(many, ch(container.ChangeAdd, fmt.Sprintf("/f%02d", 24-i)))
	}
	got = changeEvidence(many, nil)
	if len(got) != 21 || got[0] != "added /f00" || got[19] != "added /f19" || got[20] != "... and 5 more" {
		t.Fatalf("capped evidence %q", got)
	}
}

func TestUnreachableEngine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "no-engine.sock")
	p, err := New(Options{Host: "unix://" + sock})
	if err != nil {
		t.Fatalf("New with an engine that is down: %v", err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	checkErr := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s against no engine: no error", what)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s against no engine waited for the deadline: %v", what, err)
		}
		if !strings.HasPrefix(err.Error(), "docker: ") {
			t.Errorf("%s error %q lacks the docker: prefix", what, err)
		}
	}
	_, err = p.List(ctx)
	checkErr("List", err)
	_, err = p.Launch(ctx, instance.LaunchRequest{InstanceID: "web-1", Fleet: "web", ImageDigest: "sha256:" + strings.Repeat("a", 64)})
	checkErr("Launch", err)
	checkErr("Terminate", p.Terminate(ctx, "web-1", time.Second))
	_, err = p.Resolve(ctx, "immutd/sampleapp:1")
	checkErr("Resolve", err)
	_, err = p.Inspect(ctx, instance.Observed{ID: "web-1"}, nil)
	checkErr("Inspect", err)
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the provider created %s: %v", sock, err)
	}
}

func TestNewOptions(t *testing.T) {
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Host() != DefaultHost || p.PublishHost() != DefaultPublishHost {
		t.Fatalf("defaults: host %q, publish host %q", p.Host(), p.PublishHost())
	}
	p.Close()
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Host: "localhost:2375"}, "want unix:///path or tcp://host:port"},
		{Options{PublishHost: "example.com"}, "is not an IP address"},
		{Options{TLSVerify: true}, "tls_verify needs cert_path"},
		{Options{Host: "tcp://127.0.0.1:2376", CertPath: t.TempDir(), TLSVerify: true}, "docker: tls from"},
	} {
		if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", tc.opts, err, tc.want)
		}
	}
}
