package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/immutd/immutd/internal/instance"
)

// The integration tests run against the engine at $DOCKER_HOST (else the
// local socket). Everything they make carries the run id: images are
// tagged <runID>/..., containers belong to fleets named <runID>-..., and
// other objects carry the label testRunLabel=<runID>. Each test removes
// what it made in t.Cleanup; TestMain sweeps once more at the end.
var (
	runID      string // "immutd-test-<hex>"
	engineErr  error  // why the engine cannot be used, if it cannot
	imageV1    string // image ID of <runID>/sampleapp:1
	imageV2    string // image ID of <runID>/sampleapp:2
	tagV1      string
	tagV2      string
	repoRoot   string
	sharedProv *Provider
)

const testRunLabel = "io.immutd.test-run"

// opTimeout bounds every engine call a test makes.
const opTimeout = 2 * time.Minute

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	runID = "immutd-test-" + hex.EncodeToString(b)
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	repoRoot = filepath.Join(wd, "..", "..", "..")
	if testing.Short() {
		engineErr = fmt.Errorf("integration tests need a Docker engine and do not run with -short")
		return m.Run()
	}
	p, err := New(Options{Host: os.Getenv("DOCKER_HOST")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sharedProv = p
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := p.cli.Ping(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "docker tests need a running Docker engine at %s (or run go test -short): %v\n", p.Host(), err)
		return 1
	}
	defer sweep(p)
	if err := buildSampleImages(ctx, p); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// buildSampleImages builds <runID>/sampleapp:1 and :2 from the sample app
// the way the Makefile does: a static binary and the committed config in
// a context with configs/images/sampleapp-docker/Dockerfile.
func buildSampleImages(ctx context.Context, p *Provider) error {
	tmp, err := os.MkdirTemp("", "immutd-docker-test-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("go toolchain needed to build cmd/sampleapp: %w", err)
	}
	dockerfile, err := os.ReadFile(filepath.Join(repoRoot, "configs", "images", "sampleapp-docker", "Dockerfile"))
	if err != nil {
		return err
	}
	for _, v := range []struct {
		n   int
		tag *string
		id  *string
	}{{1, &tagV1, &imageV1}, {2, &tagV2, &imageV2}} {
		dir := filepath.Join(tmp, fmt.Sprintf("v%d", v.n))
		if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, "config"), 0o755); err != nil {
			return err
		}
		conf, err := os.ReadFile(filepath.Join(repoRoot, "configs", "images", fmt.Sprintf("sampleapp-v%d", v.n), "config", "app.conf"))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "config", "app.conf"), conf, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), dockerfile, 0o644); err != nil {
			return err
		}
		build := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false",
			"-ldflags", fmt.Sprintf("-X main.version=%d.0.0", v.n),
			"-o", filepath.Join(dir, "bin", "sampleapp"), "./cmd/sampleapp")
		build.Dir = repoRoot
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build sampleapp: %v\n%s", err, out)
		}
		*v.tag = fmt.Sprintf("%s/sampleapp:%d", runID, v.n)
		id, err := p.buildImage(ctx, dir, []string{*v.tag}, map[string]string{testRunLabel: runID}, true)
		if err != nil {
			return err
		}
		*v.id = id
	}
	return nil
}

// sweep removes whatever a test run left behind: containers of the run's
// fleets or with the run label, then the run's images.
func sweep(p *Provider) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, f := range []filters.Args{
		filters.NewArgs(filters.Arg("label", LabelManaged+"=true")),
		filters.NewArgs(filters.Arg("label", testRunLabel+"="+runID)),
	} {
		cs, err := p.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		if err != nil {
			fmt.Fprintln(os.Stderr, "sweep:", err)
			return
		}
		for _, c := range cs {
			if c.Labels[testRunLabel] == runID || strings.HasPrefix(c.Labels[LabelFleet], runID+"-") {
				_ = p.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
			}
		}
	}
	imgs, err := p.cli.ImageList(ctx, image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", testRunLabel+"="+runID))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sweep:", err)
		return
	}
	for _, img := range imgs {
		refs := img.RepoTags
		if len(refs) == 0 {
			refs = []string{img.ID}
		}
		for _, ref := range refs {
			_, _ = p.cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true})
		}
	}
}

// needEngine skips t in -short mode and returns the shared provider.
func needEngine(t *testing.T) *Provider {
	t.Helper()
	if engineErr != nil {
		t.Skip(engineErr)
	}
	return sharedProv
}

// testCtx is a context bounded by opTimeout and the test's deadline.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

// testFleet returns a fleet name unique to the test and the run, and
// removes the fleet's containers when the test ends.
func testFleet(t *testing.T, p *Provider) string {
	t.Helper()
	short := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	short = strings.TrimPrefix(short, "test")
	if len(short) > 24 {
		short = short[:24]
	}
	fleet := strings.Trim(runID+"-"+short, "-")
	t.Cleanup(func() { removeContainers(t, p, filters.Arg("label", LabelFleet+"="+fleet)) })
	return fleet
}

// removeContainers force-removes every container matching the filter.
func removeContainers(t *testing.T, p *Provider, f filters.KeyValuePair) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cs, err := p.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(f)})
	if err != nil {
		t.Errorf("cleanup: list containers: %v", err)
		return
	}
	for _, c := range cs {
		if err := p.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			t.Errorf("cleanup: remove container %s: %v", c.ID, err)
		}
	}
}

// request is a launch request for the run's v1 image.
func request(fleet, id string, l instance.Launch) instance.LaunchRequest {
	return instance.LaunchRequest{InstanceID: id, Fleet: fleet, ImageDigest: imageV1, TemplateHash: "tmpl-1", Launch: l}
}

// launch launches and fails the test on error.
func launch(t *testing.T, p *Provider, req instance.LaunchRequest) instance.Observed {
	t.Helper()
	obs, err := p.Launch(testCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return obs
}

// httpGet GETs http://addr/path, retrying (bounded) while the app starts.
func httpGet(t *testing.T, addr, path string) string {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for i := 0; i < 100; i++ {
		resp, err := c.Get("http://" + addr + path)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(body)
			}
			err = fmt.Errorf("status %d, body %q, read error %v", resp.StatusCode, body, rerr)
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET http://%s%s: %v", addr, path, lastErr)
	return ""
}

// waitFor polls cond (bounded) until it holds.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	var lastErr error
	for i := 0; i < 200; i++ {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last error: %v)", what, lastErr)
}

// findObserved returns the listed instance with the id.
func findObserved(t *testing.T, p *Provider, id string) (instance.Observed, bool) {
	t.Helper()
	all, err := p.List(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range all {
		if o.ID == id {
			return o, true
		}
	}
	return instance.Observed{}, false
}

// execIn runs cmd in the container as user through the exec API and
// returns its exit code and output.
func execIn(t *testing.T, p *Provider, containerID, user string, cmd ...string) (int, string) {
	t.Helper()
	ctx := testCtx(t)
	ex, err := p.cli.ContainerExecCreate(ctx, containerID, container.ExecOptions{User: user, Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	hj, err := p.cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = hj.Conn.SetDeadline(time.Now().Add(time.Minute))
	out, err := io.ReadAll(hj.Reader)
	hj.Close()
	if err != nil {
		t.Fatal(err)
	}
	var code int
	waitFor(t, "exec to finish", func() (bool, error) {
		in, err := p.cli.ContainerExecInspect(ctx, ex.ID)
		code = in.ExitCode
		return err == nil && !in.Running, err
	})
	return code, string(out)
}

// copyInto copies files (path -> content; a path ending in "/" is a
// directory) into the container's root through the archive API.
func copyInto(t *testing.T, p *Provider, containerID string, files [][2]string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f[0], Mode: 0o644, Size: int64(len(f[1])), Typeflag: tar.TypeReg, ModTime: time.Now()}
		if strings.HasSuffix(f[0], "/") {
			hdr = &tar.Header{Name: f[0], Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Now()}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(f[1])); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.cli.CopyToContainer(testCtx(t), containerID, "/", &buf, container.CopyToContainerOptions{}); err != nil {
		t.Fatal(err)
	}
}
