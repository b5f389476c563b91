package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/provider/docker"
)

// Helpers of the docker end-to-end tests: an engine handle that builds
// the sample app as test images and removes everything a test made, the
// agent and fleet configuration for docker fleets, and a private dockerd
// a test can stop and start.
//
// Everything a test creates is named or labelled with an id unique to the
// test process and the test: images carry the label e2eRunLabel=<id> and
// are tagged <id>/sampleapp:<tag>; fleets are named e<run>-<n>-<what>, so
// the containers immutd makes carry io.immutd.fleet=<that name>; the
// baseline containers of the benchmarks carry e2eRunLabel=<id>. Nothing
// else on the engine is touched.

// e2eRunLabel marks images and containers made by a docker e2e test.
const e2eRunLabel = "io.immutd.e2e-run"

// defaultDockerHost is the machine's engine, shared with other tests.
const defaultDockerHost = "unix:///var/run/docker.sock"

// engineOpTimeout bounds every engine call a helper makes.
const engineOpTimeout = 2 * time.Minute

var (
	runHexOnce sync.Once
	runHexVal  string
	engineSeq  atomic.Int64
)

// runHex is random per test process: it keeps the names of parallel
// runs (and of the docker provider's own tests) apart.
func runHex() string {
	runHexOnce.Do(func() {
		b := make([]byte, 4)
		if _, err := rand.Read(b); err != nil {
			panic(err)
		}
		runHexVal = hex.EncodeToString(b)
	})
	return runHexVal
}

// engine is one test's handle on a Docker engine.
type engine struct {
	t    testing.TB
	host string
	cli  *client.Client
	prov *docker.Provider
	// id labels this test's images and baseline containers.
	id  string
	seq int64
	// private engines belong to the test whole; their dockerd helper
	// removes everything on them.
	private bool

	mu     sync.Mutex
	fleets []string
}

// newEngine connects to the engine at host and registers the removal of
// everything the test makes on it. Call it before newEnv, so that the
// agent is stopped before its containers are removed.
func newEngine(t testing.TB, host string, private bool) *engine {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("docker client for %s: %v", host, err)
	}
	prov, err := docker.New(docker.Options{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	seq := engineSeq.Add(1)
	en := &engine{t: t, host: host, cli: cli, prov: prov, private: private, seq: seq,
		id: fmt.Sprintf("immutd-e2e-%s-%d", runHex(), seq)}
	t.Cleanup(func() {
		if !en.private {
			en.removeAll()
		}
		_ = prov.Close()
		_ = cli.Close()
	})
	ctx, cancel := en.ctx()
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		t.Fatalf("the docker tests need a running Docker engine at %s: %v", host, err)
	}
	return en
}

func (en *engine) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), engineOpTimeout)
}

// fleetName returns a fleet name unique to the run and the test.
func (en *engine) fleetName(what string) string {
	name := fmt.Sprintf("e%s-%d-%s", runHex(), en.seq, what)
	if len(name) > 40 {
		name = strings.TrimRight(name[:40], "-")
	}
	en.mu.Lock()
	en.fleets = append(en.fleets, name)
	en.mu.Unlock()
	return name
}

// repo is the image repository of this test's images.
func (en *engine) repo() string { return en.id + "/sampleapp" }

// buildSample builds the sample app bundle of version ("v1", "v2") as
// <repo>:<tag> on the engine and returns the image ID. extra is appended
// to the Dockerfile (for example a CMD). Every build is new: the label
// right after FROM makes no layer shareable with another test's.
func (en *engine) buildSample(version, tag, extra string) string {
	en.t.Helper()
	dir := en.t.TempDir()
	if err := copyTree(filepath.Join(imagesDir, "sampleapp-"+version), dir); err != nil {
		en.t.Fatal(err)
	}
	df, err := os.ReadFile(filepath.Join(repoRoot, "configs", "images", "sampleapp-docker", "Dockerfile"))
	if err != nil {
		en.t.Fatal(err)
	}
	text := strings.Replace(string(df), "FROM scratch\n", fmt.Sprintf("FROM scratch\nLABEL %s=%q\n", e2eRunLabel, en.id), 1)
	if text == string(df) {
		en.t.Fatalf("the sample Dockerfile has no FROM scratch line:\n%s", df)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(text+extra+"\n"), 0o644); err != nil {
		en.t.Fatal(err)
	}
	ctx, cancel := en.ctx()
	defer cancel()
	id, err := docker.BuildImage(ctx, en.prov, dir, []string{en.repo() + ":" + tag})
	if err != nil {
		en.t.Fatalf("build %s:%s: %v", en.repo(), tag, err)
	}
	return id
}

// tag points <repo>:<tag> at the image id.
func (en *engine) tag(imageID, tag string) {
	en.t.Helper()
	ctx, cancel := en.ctx()
	defer cancel()
	if err := en.cli.ImageTag(ctx, imageID, en.repo()+":"+tag); err != nil {
		en.t.Fatal(err)
	}
}

// containers lists the fleet's containers in any state.
func (en *engine) containers(fleet string) ([]container.Summary, error) {
	ctx, cancel := en.ctx()
	defer cancel()
	return en.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", docker.LabelFleet+"="+fleet))})
}

func (en *engine) mustContainers(fleet string) []container.Summary {
	en.t.Helper()
	cs, err := en.containers(fleet)
	if err != nil {
		en.t.Fatalf("list containers of %s: %v", fleet, err)
	}
	return cs
}

func (en *engine) inspect(ref string) (container.InspectResponse, error) {
	ctx, cancel := en.ctx()
	defer cancel()
	return en.cli.ContainerInspect(ctx, ref)
}

// execIn runs cmd in the container as root and fails the test unless it
// exits 0.
func (en *engine) execIn(containerID string, cmd ...string) {
	en.t.Helper()
	ctx, cancel := en.ctx()
	defer cancel()
	ex, err := en.cli.ContainerExecCreate(ctx, containerID, container.ExecOptions{User: "0:0", Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		en.t.Fatalf("exec create in %s: %v", containerID, err)
	}
	hj, err := en.cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		en.t.Fatalf("exec start in %s: %v", containerID, err)
	}
	var out bytes.Buffer
	_, err = stdcopy.StdCopy(&out, &out, hj.Reader)
	hj.Close()
	if err != nil {
		en.t.Fatalf("exec output in %s: %v", containerID, err)
	}
	insp, err := en.cli.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		en.t.Fatal(err)
	}
	if insp.Running || insp.ExitCode != 0 {
		en.t.Fatalf("exec %v in %s: running=%v exit %d: %s", cmd, containerID, insp.Running, insp.ExitCode, out.String())
	}
}

// copyFile adds a file to the container, as `docker cp` does.
func (en *engine) copyFile(containerID, path, content string) {
	en.t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: 0o644, Size: int64(len(content)), ModTime: time.Now()}); err != nil {
		en.t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		en.t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		en.t.Fatal(err)
	}
	ctx, cancel := en.ctx()
	defer cancel()
	if err := en.cli.CopyToContainer(ctx, containerID, "/", &buf, container.CopyToContainerOptions{}); err != nil {
		en.t.Fatalf("copy %s into %s: %v", path, containerID, err)
	}
}

// removeAll removes the containers of the test's fleets and the test's
// labelled containers, then the test's images. It runs after the agent
// was stopped; a container created by a call that was in flight when
// the agent died is caught by the second round.
func (en *engine) removeAll() {
	ctx, cancel := en.ctx()
	defer cancel()
	en.mu.Lock()
	fleets := append([]string(nil), en.fleets...)
	en.mu.Unlock()
	var args []filters.Args
	for _, f := range fleets {
		args = append(args, filters.NewArgs(filters.Arg("label", docker.LabelFleet+"="+f)))
	}
	args = append(args, filters.NewArgs(filters.Arg("label", e2eRunLabel+"="+en.id)))
	for round := 0; round < 2; round++ {
		for _, f := range args {
			cs, err := en.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
			if err != nil {
				en.t.Errorf("cleanup: list containers: %v", err)
				return
			}
			for _, c := range cs {
				if err := en.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
					en.t.Errorf("cleanup: remove container %s: %v", c.ID, err)
				}
			}
		}
		if round == 0 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Images: leaves first (removing one prunes its untagged parents), a
	// few rounds for whatever is left.
	var lastErr error
	for round := 0; round < 3; round++ {
		imgs, err := en.cli.ImageList(ctx, image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", e2eRunLabel+"="+en.id))})
		if err != nil {
			en.t.Errorf("cleanup: list images: %v", err)
			return
		}
		if len(imgs) == 0 {
			return
		}
		parents := map[string]bool{}
		for _, img := range imgs {
			parents[img.ParentID] = true
		}
		lastErr = nil
		for _, img := range imgs {
			if parents[img.ID] {
				continue
			}
			if _, err := en.cli.ImageRemove(ctx, img.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
				lastErr = fmt.Errorf("remove image %s: %w", img.ID, err)
			}
		}
	}
	en.t.Errorf("cleanup: images labelled %s=%s are left (last error: %v)", e2eRunLabel, en.id, lastErr)
}

// providerBlock is the agent's docker provider configuration.
func providerBlock(host string) string {
	return fmt.Sprintf("provider \"docker\" {\n  host = %q\n  publish_host = \"127.0.0.1\"\n}\n", host)
}

// newDockerEnv is an agent using the engine's docker provider.
func newDockerEnv(t testing.TB, en *engine) *env {
	t.Helper()
	return newEnv(t, envOpts{extra: providerBlock(en.host)})
}

// dockerFleet is a docker fleet file.
type dockerFleet struct {
	name  string
	size  int
	image string // a reference, <repo>:<tag>
	// launch is extra HCL inside launch { }; docker is the inside of
	// launch { docker { } } (default port = 8080).
	launch, docker string
	// startup is the probe's startup_timeout (default 15s).
	startup string
	// extra is HCL at the end of the fleet block.
	extra string
}

func (f dockerFleet) hcl() string {
	dk := f.docker
	if dk == "" {
		dk = "port = 8080"
	}
	startup := f.startup
	if startup == "" {
		startup = "15s"
	}
	return fmt.Sprintf(`fleet %q {
  size     = %d
  provider = "docker"
  image    = %q
  launch {
    stop_grace = "2s"
%s
    docker {
      %s
    }
  }
  health {
    http "ready" {
      path                = "/healthz"
      interval            = "1s"
      timeout             = "500ms"
      unhealthy_threshold = 3
      startup_timeout     = %q
    }
  }
  drift {
    interval = "1s"
  }
%s
}
`, f.name, f.size, f.image, f.launch, dk, startup, f.extra)
}

// fleetOf returns the named fleet of a status.
func fleetOf(st api.Status, name string) (api.Fleet, bool) {
	for _, f := range st.Fleets {
		if f.Name == name {
			return f, true
		}
	}
	return api.Fleet{}, false
}

// publishedAddr is the 127.0.0.1 address a container's port is published
// on, or "" when it has none (yet).
func publishedAddr(c container.Summary) string {
	for _, p := range c.Ports {
		if p.PublicPort != 0 && p.IP == "127.0.0.1" {
			return fmt.Sprintf("127.0.0.1:%d", p.PublicPort)
		}
	}
	return ""
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
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
				continue
			}
		}
		out = append(out, pid)
	}
	return out
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
