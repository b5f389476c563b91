package docker

import (
	"context"
	"fmt"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/immutd/immutd/internal/instance"
	"go.uber.org/zap"
)

// removalWait bounds how long Terminate waits for a removal that another
// caller already started.
const removalWait = 30 * time.Second

// Terminate stops the instance's container, giving it grace (rounded up
// to whole seconds, at least one) between the stop signal and SIGKILL,
// then removes it with its anonymous volumes. A container that is gone,
// before or during the call, is success, so Terminate is idempotent. A
// container that has the instance's name but not immutd's labels for it
// is left alone and reported as an error.
func (p *Provider) Terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := p.terminate(ctx, id, grace); err != nil {
		return fmt.Errorf("docker: terminate %s: %w", id, err)
	}
	return nil
}

func (p *Provider) terminate(ctx context.Context, id string, grace time.Duration) error {
	if err := instance.CheckID(id); err != nil {
		return err
	}
	name := containerName(id)
	c, err := p.cli.ContainerInspect(ctx, name)
	switch {
	case cerrdefs.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("inspect %s: %w", name, err)
	}
	if err := checkOwned(c, id); err != nil {
		return err
	}
	// Address the container by id from here on: a container created
	// under the same name after our look is not the one we judged.
	timeout := stopSeconds(grace)
	if err := p.cli.ContainerStop(ctx, c.ID, container.StopOptions{Timeout: &timeout}); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		// A stop can fail for a container that is already being removed
		// or is dead; the forced removal below settles it either way.
		p.log.Debug("stop failed; removing by force", zapID(id), zap.Error(err))
	}
	err = p.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	switch {
	case err == nil, cerrdefs.IsNotFound(err):
		return nil
	case cerrdefs.IsConflict(err):
		// "removal already in progress": wait for it to finish.
		return p.waitRemoved(ctx, c.ID, err)
	default:
		return fmt.Errorf("remove %s: %w", name, err)
	}
}

// waitRemoved waits (bounded) until another removal of the container is
// done. cause is the error that made us wait.
func (p *Provider) waitRemoved(ctx context.Context, ref string, cause error) error {
	ctx, cancel := context.WithTimeout(ctx, removalWait)
	defer cancel()
	resc, errc := p.cli.ContainerWait(ctx, ref, container.WaitConditionRemoved)
	select {
	case <-resc:
		return nil
	case err := <-errc:
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("remove %s: %w (waiting for the removal in progress: %v)", shortID(ref), cause, err)
	}
}

// stopSeconds is grace in whole seconds, rounded up, at least 1.
func stopSeconds(grace time.Duration) int {
	s := int((grace + time.Second - 1) / time.Second)
	if s < 1 {
		return 1
	}
	return s
}
