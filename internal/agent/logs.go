package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/instance"
)

// logReader is the providers' optional view of instances' output.
type logReader interface {
	Logs(ctx context.Context, id string, max int64) ([]byte, error)
}

// Logs returns the last max bytes of instance id's output from the first
// provider of this agent that has it, live or kept after the instance is
// gone. In a cluster the leader's providers ran the instances, so ask the
// leader (or, for the local and qemu providers, any agent of the host).
func (a *Agent) Logs(ctx context.Context, id string, max int64) ([]byte, error) {
	if err := instance.CheckID(id); err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	for _, name := range slices.Sorted(maps.Keys(a.providers)) {
		lr, ok := a.providers[name].(logReader)
		if !ok {
			continue
		}
		out, err := lr.Logs(ctx, id, max)
		switch {
		case err == nil:
			return out, nil
		case errors.Is(err, fs.ErrNotExist):
			continue
		default:
			return nil, fmt.Errorf("%s provider: %w", name, err)
		}
	}
	return nil, fmt.Errorf("%w: no output of instance %s on agent %s (ask the leader: it runs the instances)", api.ErrNotFound, id, a.cfg.NodeName)
}
