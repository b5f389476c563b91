package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
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
	// The last part of its output outlives the container.
	if err := p.keepOutput(ctx, id, c.ID); err != nil {
		p.log.Warn("could not keep the container's last output", zapID(id), zap.Error(err))
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

// keptLines is how many of a container's last lines the engine is asked
// for when its output is kept (the archive keeps the last 256 KiB of them).
const keptLines = "5000"

// keepOutput keeps the last part of container ref's output (stdout and
// stderr interleaved as the engine has them) as instance id's.
func (p *Provider) keepOutput(ctx context.Context, id, ref string) error {
	if p.kept == nil {
		return nil
	}
	out, err := p.containerLogs(ctx, ref, keptLines)
	if err != nil {
		return err
	}
	return p.kept.Keep(id, bytes.NewReader(out))
}

// containerLogs is the last lines of a container's output, demultiplexed.
func (p *Provider) containerLogs(ctx context.Context, ref, lines string) ([]byte, error) {
	rc, err := p.cli.ContainerLogs(ctx, ref, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: lines})
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	w := &limitedWriter{w: &buf, left: 8 << 20}
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil && !errors.Is(err, errLimit) {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Logs returns the last max bytes of instance id's output: the engine's
// while the container exists, what was kept of it once it is gone. An
// error wrapping fs.ErrNotExist when there is neither.
func (p *Provider) Logs(ctx context.Context, id string, max int64) ([]byte, error) {
	if err := instance.CheckID(id); err != nil {
		return nil, err
	}
	c, err := p.cli.ContainerInspect(ctx, containerName(id))
	if err == nil && checkOwned(c, id) == nil {
		out, err := p.containerLogs(ctx, c.ID, keptLines)
		if err != nil {
			return nil, err
		}
		if int64(len(out)) > max {
			out = out[int64(len(out))-max:]
		}
		return out, nil
	}
	if err != nil && !cerrdefs.IsNotFound(err) {
		return nil, err
	}
	if p.kept == nil {
		return nil, fmt.Errorf("no container %s, and its output is not kept: %w", containerName(id), fs.ErrNotExist)
	}
	return p.kept.Read(id, max)
}

var errLimit = errors.New("output limit reached")

// limitedWriter stops after left bytes (a container that logs without
// end must not fill the agent's memory).
type limitedWriter struct {
	w    io.Writer
	left int
}

func (l *limitedWriter) Write(b []byte) (int, error) {
	if len(b) > l.left {
		n, _ := l.w.Write(b[:l.left])
		l.left = 0
		return n, errLimit
	}
	l.left -= len(b)
	return l.w.Write(b)
}
