package docker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/conformance"
)

// TestConformance runs the provider conformance suite against the real
// Docker engine. The state is the engine itself (every behaviour shares
// it), so every instance id starts with the run id and every container
// the suite makes is removed by its behaviour (and by TestMain's sweep).
func TestConformance(t *testing.T) {
	shared := needEngine(t)
	crashing := buildCrashingImage(t, shared)
	host := shared.Host()

	conformance.Run(t, conformance.Harness{
		Name:     "docker",
		NewState: func(t *testing.T) string { return host },
		Open: func(t *testing.T, host string) conformance.Provider {
			p, err := New(Options{Host: host})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			return p
		},
		Healthy:  imageV1,
		Crashing: crashing,
		Missing:  "sha256:" + strings.Repeat("0", 64),
		Template: instance.Launch{},
		Prefix:   runID,
		Mutate: func(t *testing.T, _ string, obs instance.Observed, name string) string {
			// `docker cp` into the container's root, past the provider.
			copyInto(t, shared, obs.ProviderRef, [][2]string{{name, "changed in place\n"}})
			return "/" + name
		},
		Kill: func(t *testing.T, _ string, obs instance.Observed) {
			if err := shared.cli.ContainerKill(testCtx(t), obs.ProviderRef, "SIGKILL"); err != nil {
				t.Fatal(err)
			}
		},
		Live: func(t *testing.T, _, id string) int {
			n := 0
			for _, c := range conformanceContainers(t, shared, id) {
				if c.State == container.StateRunning {
					n++
				}
			}
			return n
		},
		Leftovers: func(t *testing.T, _, id string) []string {
			var left []string
			for _, c := range conformanceContainers(t, shared, id) {
				left = append(left, fmt.Sprintf("container %s %s (%s: %s)", shortID(c.ID), strings.Join(c.Names, ","), c.State, c.Status))
			}
			return left
		},
		Remove: func(t *testing.T, _, id string) {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			for _, c := range conformanceContainers(t, shared, id) {
				if err := shared.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
					t.Errorf("cleanup: remove container %s: %v", c.ID, err)
				}
			}
		},
	})
}

// conformanceContainers lists, in any state, the containers the engine
// has for instance id: by immutd's label or by the instance's name.
func conformanceContainers(t *testing.T, p *Provider, id string) []container.Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	byID := map[string]container.Summary{}
	for _, f := range []filters.KeyValuePair{
		filters.Arg("label", LabelInstance+"="+id),
		filters.Arg("name", "^/"+regexp.QuoteMeta(containerName(id))+"$"),
	} {
		cs, err := p.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(f)})
		if err != nil {
			t.Fatalf("list containers of %s: %v", id, err)
		}
		for _, c := range cs {
			byID[c.ID] = c
		}
	}
	out := make([]container.Summary, 0, len(byID))
	for _, c := range byID {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// buildCrashingImage builds, from the run's sample app image, an image
// whose process exits at once (sampleapp refuses the flag and exits with
// status 2), and removes it when t ends.
func buildCrashingImage(t *testing.T, p *Provider) string {
	t.Helper()
	dir := t.TempDir()
	dockerfile := fmt.Sprintf("FROM %s\nENTRYPOINT [\"/bin/sampleapp\", \"-no-such-flag\"]\n", tagV1)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	tag := runID + "/sampleapp:crash"
	id, err := p.buildImage(testCtx(t), dir, []string{tag}, map[string]string{testRunLabel: runID}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if _, err := p.cli.ImageRemove(ctx, id, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
			t.Errorf("cleanup: remove image %s: %v", tag, err)
		}
	})
	return id
}
