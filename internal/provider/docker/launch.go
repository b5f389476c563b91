package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
)

// Launch runs instance req.InstanceID as the container
// "immutd-<instance id>" from the image ID req.ImageDigest.
//
// It is idempotent by name: if the container already exists (an earlier
// try of the same launch made it), Launch returns it and creates no
// second one; a container that was only created is started first, one
// that ran and ended is returned as it is (exited) for the planner to
// judge.
//
// The container carries the io.immutd.* labels, runs req.Launch.Command
// as entrypoint when set and req.Launch.Args as its command, and gets the
// fleet's launch env plus IMMUTD_INSTANCE_ID, IMMUTD_FLEET,
// IMMUTD_IMAGE_DIGEST and PORT. Its restart policy is "no": immutd, not
// the engine, replaces instances that end.
//
// Networking follows req.Launch.Docker (nil means bridge, port 8080).
// Bridge: PORT is the container port, published on the provider's
// publish host on a port the engine picks. Host: the container shares
// the engine host's network and PORT is a free port of the publish host,
// picked by immutd; that pick is only meaningful when the engine runs on
// the agent's machine, and another process may take the port before the
// app binds it (the launch then ends as an exited instance).
//
// The returned Observed has Address publish-host:host-port as the engine
// reports it after the start, Location the container name and
// ProviderRef the container id.
func (p *Provider) Launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	obs, err := p.launch(ctx, req)
	if err != nil {
		return instance.Observed{}, fmt.Errorf("docker: launch %s: %w", req.InstanceID, err)
	}
	return obs, nil
}

func (p *Provider) launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error) {
	if err := req.Check(); err != nil {
		return instance.Observed{}, err
	}
	if req.ImageDigest == "" {
		return instance.Observed{}, instance.Permanent(errors.New("no image id"))
	}
	nw, err := networkOf(req.Launch.Docker)
	if err != nil {
		return instance.Observed{}, err
	}
	name := containerName(req.InstanceID)
	// A concurrent launch of the same id may create the container between
	// our look and our create; a later look finds it. The engine reserves
	// a name a moment before it can be looked up by it, so the looks wait
	// a little, for at most nameSettle in all.
	deadline := time.Now().Add(nameSettle)
	for try := 0; ; try++ {
		if try > 0 {
			if time.Now().After(deadline) {
				return instance.Observed{}, fmt.Errorf("create %s: the name is in use but the container cannot be found", name)
			}
			select {
			case <-ctx.Done():
				return instance.Observed{}, ctx.Err()
			case <-time.After(min(time.Duration(try)*20*time.Millisecond, 250*time.Millisecond)):
			}
		}
		c, err := p.cli.ContainerInspect(ctx, name)
		switch {
		case err == nil:
			return p.adoptExisting(ctx, req.InstanceID, c)
		case !cerrdefs.IsNotFound(err):
			return instance.Observed{}, fmt.Errorf("inspect %s: %w", name, err)
		}
		hostPort := 0
		if nw.mode == NetworkHost {
			if hostPort, err = p.freePort(); err != nil {
				return instance.Observed{}, fmt.Errorf("pick a host port: %w", err)
			}
		}
		cfg, hcfg := p.containerConfig(req, nw, hostPort)
		created, err := p.cli.ContainerCreate(ctx, cfg, hcfg, nil, nil, name)
		switch {
		case err == nil:
			for _, w := range created.Warnings {
				p.log.Warn("engine warning on create", zapID(req.InstanceID), zap.String("warning", w))
			}
			if err := p.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
				return instance.Observed{}, p.failedStart(ctx, req.InstanceID, created.ID, err)
			}
			return p.observeID(ctx, created.ID)
		case cerrdefs.IsConflict(err):
			continue // the name was taken meanwhile: look again
		case cerrdefs.IsNotFound(err):
			return instance.Observed{}, instance.Permanent(fmt.Errorf("image %s is not on the engine at %s: %w", req.ImageDigest, p.host, err))
		default:
			return instance.Observed{}, fmt.Errorf("create %s: %w", name, err)
		}
	}
}

// nameSettle bounds how long a launch waits for a container name that is
// in use to become visible.
const nameSettle = 10 * time.Second

// failedStart removes a container that was created but would not start
// (a command that does not exist, say), so that a failed launch leaves
// nothing behind. When the start failed because the launch was cancelled,
// the container stays: it may have started after all, and the retry of
// the launch adopts it.
func (p *Provider) failedStart(ctx context.Context, id, containerID string, startErr error) error {
	err := fmt.Errorf("start %s: %w", containerName(id), startErr)
	if ctx.Err() != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if rerr := p.cli.ContainerRemove(rctx, containerID, container.RemoveOptions{Force: true}); rerr != nil && !cerrdefs.IsNotFound(rerr) {
		p.log.Warn("could not remove a container that failed to start", zapID(id), zap.String("container", containerID), zap.Error(rerr))
		return fmt.Errorf("%w (and removing it failed: %v)", err, rerr)
	}
	return err
}

// adoptExisting returns the container an earlier try of the same launch
// made, starting it if it was only created.
func (p *Provider) adoptExisting(ctx context.Context, id string, c container.InspectResponse) (instance.Observed, error) {
	if err := checkOwned(c, id); err != nil {
		return instance.Observed{}, err
	}
	if c.State != nil && c.State.Status == container.StateCreated {
		p.log.Info("starting container left created by an earlier launch", zapID(id), zap.String("container", c.ID))
		if err := p.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			return instance.Observed{}, p.failedStart(ctx, id, c.ID, err)
		}
		return p.observeID(ctx, c.ID)
	}
	p.log.Info("launch found its container", zapID(id), zap.String("container", c.ID))
	return p.observe(c)
}

// checkOwned refuses to touch a container that has the instance's name
// but is not immutd's container for that instance.
func checkOwned(c container.InspectResponse, id string) error {
	var labels map[string]string
	if c.Config != nil {
		labels = c.Config.Labels
	}
	if labels[LabelManaged] != "true" || labels[LabelInstance] != id {
		return fmt.Errorf("container %s (%s) is not immutd's container for instance %s (labels %s=%q, %s=%q); remove or rename it",
			containerName(id), shortID(c.ID), id, LabelManaged, labels[LabelManaged], LabelInstance, labels[LabelInstance])
	}
	return nil
}

// network is a checked launch { docker { ... } } networking setting.
type network struct {
	mode string // NetworkBridge or NetworkHost
	port int    // the container port (bridge)
}

func networkOf(d *instance.DockerLaunch) (network, error) {
	n := network{mode: defaultNetworkMode, port: DefaultPort}
	if d == nil {
		return n, nil
	}
	if d.NetworkMode != "" {
		n.mode = d.NetworkMode
	}
	if d.Port != 0 {
		n.port = d.Port
	}
	if n.mode != NetworkBridge && n.mode != NetworkHost {
		return network{}, fmt.Errorf("network mode %q: want %q or %q", n.mode, NetworkBridge, NetworkHost)
	}
	if n.port < 1 || n.port > 65535 {
		return network{}, fmt.Errorf("port %d: want 1-65535", n.port)
	}
	if d.MemoryBytes < 0 || d.NanoCPUs < 0 {
		return network{}, fmt.Errorf("memory and cpus must not be negative")
	}
	return n, nil
}

// containerConfig is the container and host configuration of a launch.
// hostPort is the port picked for host networking.
func (p *Provider) containerConfig(req instance.LaunchRequest, n network, hostPort int) (*container.Config, *container.HostConfig) {
	port := n.port
	if n.mode == NetworkHost {
		port = hostPort
	}
	cfg := &container.Config{
		Image: req.ImageDigest,
		Env:   buildEnv(req, port),
		Labels: map[string]string{
			LabelManaged:  "true",
			LabelFleet:    req.Fleet,
			LabelInstance: req.InstanceID,
			LabelImage:    req.ImageDigest,
			LabelTemplate: req.TemplateHash,
		},
	}
	if len(req.Launch.Command) > 0 {
		cfg.Entrypoint = append([]string(nil), req.Launch.Command...)
	}
	if len(req.Launch.Args) > 0 {
		// Args replace the image's CMD. An entrypoint set here drops the
		// image's CMD anyway, so a Command without Args runs alone.
		cfg.Cmd = append([]string(nil), req.Launch.Args...)
	}
	hcfg := &container.HostConfig{
		NetworkMode:   container.NetworkMode(n.mode),
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
	}
	if n.mode == NetworkBridge {
		cp := nat.Port(strconv.Itoa(n.port) + "/tcp")
		cfg.ExposedPorts = nat.PortSet{cp: struct{}{}}
		hcfg.PortBindings = nat.PortMap{cp: {{HostIP: p.publishHost, HostPort: ""}}}
	}
	if d := req.Launch.Docker; d != nil {
		hcfg.ReadonlyRootfs = d.ReadOnly
		hcfg.Memory = d.MemoryBytes
		hcfg.NanoCPUs = d.NanoCPUs
	}
	return cfg, hcfg
}

// buildEnv returns the container's environment, sorted. The image's own
// ENV still applies to names not set here.
func buildEnv(req instance.LaunchRequest, port int) []string { return req.Env(nil, port) }

// freePort asks the kernel for a free TCP port on the publish host.
func (p *Provider) freePort() (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(p.publishHost, "0"))
	if err != nil {
		return 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
