package consul

import (
	"context"
	"fmt"
	"sort"

	"github.com/hashicorp/consul/api"
)

// InstanceChecks are the Consul checks attached to an instance's
// registration (service id immutd-FLEET-ID) other than immutd's own TTL
// check: checks an operator or another tool registered for it. A health
// check of kind consul takes them as one more input. It does not use
// the backend's service name.
func (b *Backend) InstanceChecks(ctx context.Context, fleet, instanceID string) ([]*api.AgentCheck, error) {
	id := serviceID(fleet, instanceID)
	rctx, cancel := b.request(ctx, 0)
	defer cancel()
	all, err := b.client.Agent().ChecksWithFilterOpts(fmt.Sprintf("ServiceID == %q", id), (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return nil, fmt.Errorf("consul: checks of %s: %w", id, classify(ctx, err))
	}
	own := checkID(fleet, instanceID)
	out := make([]*api.AgentCheck, 0, len(all))
	for _, c := range all {
		if c != nil && c.CheckID != own {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CheckID < out[j].CheckID })
	return out, nil
}
