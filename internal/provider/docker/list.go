package docker

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/go-connections/nat"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
)

// listParallel bounds the container inspections one List runs at once.
const listParallel = 8

// List reports every container on the engine labelled
// io.immutd.managed=true, in any state, sorted by instance id.
//
// A container is running while the engine says it runs (a paused or
// restarting container counts as running; probes judge it). Otherwise it
// is exited, and ExitReason says how: "oom_killed", "dead",
// "created, never started", "removing" or "exited with code N", followed
// by the engine's error message when it has one. ImageDigest is the ID of
// the image the container really runs; TemplateHash comes from its label.
//
// Any engine error fails the whole List: the caller then treats the
// provider as unreachable and terminates nothing. A container removed
// between the listing and its inspection is left out.
func (p *Provider) List(ctx context.Context) ([]instance.Observed, error) {
	out, err := p.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker: list: %w", err)
	}
	return out, nil
}

func (p *Provider) list(ctx context.Context) ([]instance.Observed, error) {
	summaries, err := p.cli.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", LabelManaged+"=true")),
	})
	if err != nil {
		return nil, err
	}
	type result struct {
		obs   instance.Observed
		found bool
		err   error
	}
	results := make([]result, len(summaries))
	sem := make(chan struct{}, listParallel)
	var wg sync.WaitGroup
	for i, s := range summaries {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := p.cli.ContainerInspect(ctx, s.ID)
			switch {
			case cerrdefs.IsNotFound(err):
				return // removed meanwhile
			case err != nil:
				results[i].err = fmt.Errorf("inspect %s: %w", shortID(s.ID), err)
				return
			}
			obs, err := p.observe(c)
			if err != nil {
				p.log.Debug("skipping managed container without an instance id", zap.String("container", s.ID), zap.Error(err))
				return
			}
			results[i] = result{obs: obs, found: true}
		}()
	}
	wg.Wait()
	out := make([]instance.Observed, 0, len(results))
	for _, r := range results {
		if r.err != nil {
			return nil, r.err
		}
		if r.found {
			out = append(out, r.obs)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// observeID inspects a container and describes it.
func (p *Provider) observeID(ctx context.Context, ref string) (instance.Observed, error) {
	c, err := p.cli.ContainerInspect(ctx, ref)
	if err != nil {
		return instance.Observed{}, fmt.Errorf("inspect %s: %w", shortID(ref), err)
	}
	return p.observe(c)
}

// observe describes an inspected container as an instance.
func (p *Provider) observe(c container.InspectResponse) (instance.Observed, error) {
	if c.ContainerJSONBase == nil || c.State == nil {
		return instance.Observed{}, fmt.Errorf("engine returned an incomplete inspection of %s", shortID(c.ID))
	}
	var labels map[string]string
	var env []string
	if c.Config != nil {
		labels, env = c.Config.Labels, c.Config.Env
	}
	name := strings.TrimPrefix(c.Name, "/")
	id := labels[LabelInstance]
	if id == "" {
		id = strings.TrimPrefix(name, NamePrefix)
		if id == name || instance.CheckID(id) != nil {
			return instance.Observed{}, fmt.Errorf("container %s has no %s label and no %s name", name, LabelInstance, NamePrefix+"<id>")
		}
	}
	obs := instance.Observed{
		ID:           id,
		Fleet:        labels[LabelFleet],
		ImageDigest:  c.Image,
		TemplateHash: labels[LabelTemplate],
		ProviderRef:  c.ID,
		Location:     name,
		StartedAt:    startedAt(c),
	}
	obs.Phase, obs.ExitReason = phaseOf(c.State)
	if obs.Phase == instance.Running {
		obs.Address = p.address(c, env)
	}
	return obs, nil
}

// phaseOf maps the engine's container state to an instance phase and,
// for an instance that is not running, the reason it is not.
func phaseOf(s *container.State) (instance.Phase, string) {
	if s.Running {
		return instance.Running, ""
	}
	var reason string
	switch {
	case s.OOMKilled:
		reason = "oom_killed"
	case s.Dead || s.Status == container.StateDead:
		reason = "dead"
	case s.Status == container.StateCreated:
		reason = "created, never started"
	case s.Status == container.StateRemoving:
		reason = "removing"
	default:
		reason = "exited with code " + strconv.Itoa(s.ExitCode)
	}
	if msg := strings.TrimSpace(s.Error); msg != "" {
		reason += ": " + msg
	}
	return instance.Exited, reason
}

// startedAt is when the container last started, or when it was created
// if it never started.
func startedAt(c container.InspectResponse) time.Time {
	for _, s := range []string{c.State.StartedAt, c.Created} {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err == nil && t.Year() > 1 {
			return t.UTC()
		}
	}
	return time.Time{}
}

// address is where probes reach a running container: the published host
// port (bridge) or the PORT it was given (host networking).
func (p *Provider) address(c container.InspectResponse, env []string) string {
	if c.HostConfig != nil && c.HostConfig.NetworkMode.IsHost() {
		if port := envValue(env, EnvPort); port != "" {
			return net.JoinHostPort(p.publishHost, port)
		}
		return ""
	}
	if c.NetworkSettings == nil {
		return ""
	}
	// One port is published; pick it deterministically all the same.
	keys := make([]string, 0, len(c.NetworkSettings.Ports))
	for k := range c.NetworkSettings.Ports {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, b := range c.NetworkSettings.Ports[nat.Port(k)] {
			if b.HostPort == "" {
				continue
			}
			host := b.HostIP
			if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
				host = p.publishHost
			}
			return net.JoinHostPort(host, b.HostPort)
		}
	}
	return ""
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}
