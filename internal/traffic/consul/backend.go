package consul

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/traffic"
)

var _ traffic.Backend = (*Backend)(nil)

// Blocking reads (features/blocking.mdx): each waits at most
// maxBlockingWait (less when ctx ends sooner), and a token bucket with
// burst confirmBurst lets two reads through at once and then one per
// confirmEvery, so a churning index degrades into polling instead of a
// busy loop.
const (
	maxBlockingWait = time.Minute
	minBlockingWait = 10 * time.Millisecond
	confirmEvery    = time.Second
	confirmBurst    = 2
)

// maintenancePrefix starts the check ID of Consul's service maintenance
// mode; an operator's maintenance is not a difference Sync repairs.
const maintenancePrefix = "_service_maintenance:"

func serviceID(fleet, instanceID string) string { return idPrefix + fleet + "-" + instanceID }
func checkID(fleet, instanceID string) string   { return checkPrefix + fleet + "-" + instanceID }

// checkMember refuses a member that cannot be registered (a permanent
// error: the same member fails the same way again).
func (b *Backend) checkMember(m traffic.Member) error {
	if err := instance.CheckID(m.InstanceID); err != nil {
		return err
	}
	if !fleetRE.MatchString(m.Fleet) {
		return instance.Permanent(fmt.Errorf("fleet %q: must be 1-64 letters, digits, '.', '_' or '-'", m.Fleet))
	}
	if b.cfg.Fleet != "" && m.Fleet != b.cfg.Fleet {
		return instance.Permanent(fmt.Errorf("member of fleet %q, but this backend serves fleet %q", m.Fleet, b.cfg.Fleet))
	}
	return nil
}

// registration is what the agent should hold for m.
func (b *Backend) registration(m traffic.Member) (*api.AgentServiceRegistration, error) {
	if err := b.checkMember(m); err != nil {
		return nil, err
	}
	host, portText, err := net.SplitHostPort(m.Address)
	port, perr := strconv.Atoi(portText)
	if err != nil || host == "" || perr != nil || port < 1 || port > 65535 {
		return nil, instance.Permanent(fmt.Errorf("address %q: must be host:port", m.Address))
	}
	if len(m.ImageDigest) > maxMetaValueLen || len(m.Version) > maxMetaValueLen {
		return nil, instance.Permanent(fmt.Errorf("image digest or version longer than Consul's %d-byte meta value limit", maxMetaValueLen))
	}
	meta := make(map[string]string, len(b.cfg.Meta)+ownMetaPairs)
	maps.Copy(meta, b.cfg.Meta)
	meta[metaSource] = sourceImmutd
	meta[metaFleet] = m.Fleet
	meta[metaInstance] = m.InstanceID
	// Empty values are left out rather than registered as "".
	if m.ImageDigest != "" {
		meta[metaDigest] = m.ImageDigest
	}
	if m.Version != "" {
		meta[metaVersion] = m.Version
	}
	check := &api.AgentServiceCheck{
		CheckID: checkID(m.Fleet, m.InstanceID),
		Name:    "immutd health verdict",
		TTL:     b.cfg.TTL.String(),
		Notes:   b.checkNotes(),
		Status:  checkStatus(m.Healthy),
	}
	if b.cfg.DeregisterCriticalAfter > 0 {
		check.DeregisterCriticalServiceAfter = b.cfg.DeregisterCriticalAfter.String()
	}
	return &api.AgentServiceRegistration{
		ID:      serviceID(m.Fleet, m.InstanceID),
		Name:    b.cfg.Service,
		Tags:    tagsOf(b.cfg.Tags, m.Canary),
		Address: host,
		Port:    port,
		Meta:    meta,
		Check:   check,
	}, nil
}

// CanaryTag marks a canary's registration.
const CanaryTag = "canary"

// tagsOf is a registration's tags: the configured ones, and for a canary
// the canary tag.
func tagsOf(tags []string, canary bool) []string {
	out := slices.Clone(tags)
	if canary && !slices.Contains(out, CanaryTag) {
		out = append(out, CanaryTag)
	}
	return out
}

// checkNotes describes the check's definition; the agent reports Notes
// back, so a changed TTL is seen as a difference and registered again.
func (b *Backend) checkNotes() string {
	s := "immutd sets this check from its quorum health verdict; ttl " + b.cfg.TTL.String()
	if b.cfg.DeregisterCriticalAfter > 0 {
		s += "; deregister critical after " + b.cfg.DeregisterCriticalAfter.String()
	}
	return s
}

func checkStatus(healthy bool) string {
	if healthy {
		return api.HealthPassing
	}
	return api.HealthCritical
}

func checkOutput(healthy bool) string {
	if healthy {
		return "immutd verdict: healthy"
	}
	return "immutd verdict: unhealthy; immutd keeps this instance out of traffic"
}

// differs says why the agent's registration cur (nil: none) and its
// checks are not reg, or "" when they are.
func differs(reg *api.AgentServiceRegistration, cur *api.AgentService, checks []*api.AgentCheck) string {
	if cur == nil {
		return "missing"
	}
	switch {
	case cur.Service != reg.Name:
		return "name_changed"
	case cur.Address != reg.Address || cur.Port != reg.Port:
		return "address_changed"
	case len(cur.Tags) != len(reg.Tags) || (len(reg.Tags) > 0 && !slices.Equal(cur.Tags, reg.Tags)):
		return "tags_changed"
	case !maps.Equal(cur.Meta, reg.Meta):
		return "meta_changed"
	}
	found := false
	for _, c := range checks {
		switch {
		case c.CheckID == reg.Check.CheckID:
			if c.Notes != reg.Check.Notes || (c.Type != "" && c.Type != "ttl") {
				return "check_changed"
			}
			found = true
		case strings.HasPrefix(c.CheckID, maintenancePrefix):
		default:
			return "extra_check"
		}
	}
	if !found {
		return "check_missing"
	}
	return ""
}

// owned says whether the agent's service s is one this backend manages:
// the service name, the external-source marker, the immutd- ID prefix and
// an ID that matches its own fleet and instance meta (and the fleet, when
// the backend has one).
func (b *Backend) owned(s *api.AgentService) bool {
	fleet, inst := s.Meta[metaFleet], s.Meta[metaInstance]
	return s.Service == b.cfg.Service && s.Meta[metaSource] == sourceImmutd &&
		strings.HasPrefix(s.ID, idPrefix) && fleet != "" && inst != "" &&
		s.ID == serviceID(fleet, inst) && (b.cfg.Fleet == "" || fleet == b.cfg.Fleet)
}

// listOwned reads the agent's immutd-owned registrations of the service
// (only id, when id is not "") and their checks by service ID.
func (b *Backend) listOwned(ctx context.Context, id string) (map[string]*api.AgentService, map[string][]*api.AgentCheck, error) {
	filter := fmt.Sprintf("Service == %q and Meta[%q] == %q", b.cfg.Service, metaSource, sourceImmutd)
	checkFilter := fmt.Sprintf("ServiceName == %q", b.cfg.Service)
	if b.cfg.Fleet != "" {
		filter += fmt.Sprintf(" and Meta[%q] == %q", metaFleet, b.cfg.Fleet)
	}
	if id != "" {
		filter += fmt.Sprintf(" and ID == %q", id)
		checkFilter += fmt.Sprintf(" and ServiceID == %q", id)
	}
	rctx, cancel := b.request(ctx, 0)
	defer cancel()
	all, err := b.client.Agent().ServicesWithFilterOpts(filter, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return nil, nil, fmt.Errorf("list agent services: %w", classify(ctx, err))
	}
	services := make(map[string]*api.AgentService, len(all))
	for _, s := range all {
		if s != nil && b.owned(s) {
			services[s.ID] = s
		}
	}
	checks := map[string][]*api.AgentCheck{}
	if len(services) == 0 {
		return services, checks, nil
	}
	allChecks, err := b.client.Agent().ChecksWithFilterOpts(checkFilter, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return nil, nil, fmt.Errorf("list agent checks: %w", classify(ctx, err))
	}
	for _, c := range allChecks {
		if c != nil && services[c.ServiceID] != nil {
			checks[c.ServiceID] = append(checks[c.ServiceID], c)
		}
	}
	return services, checks, nil
}

// ensure makes the agent hold reg (registering it when it is missing or
// different) and sets and refreshes its TTL check from m.Healthy.
func (b *Backend) ensure(ctx context.Context, reg *api.AgentServiceRegistration, m traffic.Member, cur *api.AgentService, checks []*api.AgentCheck) error {
	if why := differs(reg, cur, checks); why != "" {
		if err := b.register(ctx, reg, m, why); err != nil {
			return err
		}
	}
	err := b.updateTTL(ctx, reg.Check.CheckID, m.Healthy)
	if statusCode(err) == http.StatusNotFound {
		// The check went away after the listing: register again.
		if err := b.register(ctx, reg, m, "check_missing"); err != nil {
			return err
		}
		err = b.updateTTL(ctx, reg.Check.CheckID, m.Healthy)
	}
	if err != nil {
		return fmt.Errorf("update check %s: %w", reg.Check.CheckID, classify(ctx, err))
	}
	return nil
}

// register registers reg, replacing the service's checks. The agent keeps
// the status of a check it already has under that ID, so the caller sets
// the status afterwards.
func (b *Backend) register(ctx context.Context, reg *api.AgentServiceRegistration, m traffic.Member, why string) error {
	rctx, cancel := b.request(ctx, 0)
	defer cancel()
	err := b.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(rctx))
	if err != nil {
		return fmt.Errorf("register %s: %w", reg.ID, classify(ctx, err))
	}
	b.log.Info("registered service instance", zap.String("fleet", m.Fleet), zap.String("instance_id", m.InstanceID),
		zap.String("service_id", reg.ID), zap.String("reason", why))
	return nil
}

func (b *Backend) updateTTL(ctx context.Context, id string, healthy bool) error {
	rctx, cancel := b.request(ctx, 0)
	defer cancel()
	return b.client.Agent().UpdateTTLOpts(id, checkOutput(healthy), checkStatus(healthy), (&api.QueryOptions{}).WithContext(rctx))
}

// deregister removes the service id from the agent; one the agent does
// not have is success (the docs say "no action is taken", the agent
// answers 404 "Unknown service ID").
func (b *Backend) deregister(ctx context.Context, id string) error {
	rctx, cancel := b.request(ctx, 0)
	defer cancel()
	err := b.client.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil && statusCode(err) != http.StatusNotFound {
		return fmt.Errorf("deregister %s: %w", id, classify(ctx, err))
	}
	return nil
}

// Admit registers m (when missing or different), sets its TTL check from
// m.Healthy and returns nil once health/service/<service>?passing lists
// it. A member immutd judges unhealthy is registered with a critical check
// and refused: Consul would not route to it.
func (b *Backend) Admit(ctx context.Context, m traffic.Member) error {
	reg, err := b.registration(m)
	if err != nil {
		return fmt.Errorf("consul: admit %s: %w", m.InstanceID, err)
	}
	b.markSeen(reg.ID)
	services, checks, err := b.listOwned(ctx, reg.ID)
	if err == nil {
		err = b.ensure(ctx, reg, m, services[reg.ID], checks[reg.ID])
	}
	if err != nil {
		return fmt.Errorf("consul: admit %s: %w", m.InstanceID, err)
	}
	if !m.Healthy {
		return fmt.Errorf("consul: admit %s: immutd's verdict is unhealthy, so its check is critical and Consul keeps it out of the passing set", m.InstanceID)
	}
	if err := b.await(ctx, reg.ID, true); err != nil {
		return fmt.Errorf("consul: admit %s: %w", m.InstanceID, err)
	}
	return nil
}

// Drain deregisters m and returns nil once health/service/<service>?passing
// no longer lists it.
func (b *Backend) Drain(ctx context.Context, m traffic.Member) error {
	if err := b.checkMember(m); err != nil {
		return fmt.Errorf("consul: drain %s: %w", m.InstanceID, err)
	}
	id := serviceID(m.Fleet, m.InstanceID)
	if err := b.deregister(ctx, id); err != nil {
		return fmt.Errorf("consul: drain %s: %w", m.InstanceID, err)
	}
	b.forget(id)
	if err := b.await(ctx, id, false); err != nil {
		return fmt.Errorf("consul: drain %s: %w", m.InstanceID, err)
	}
	return nil
}

// Connections: Consul cannot tell.
func (b *Backend) Connections(context.Context, traffic.Member) (int, bool, error) {
	return 0, false, nil
}

// Remove deregisters m again (Drain already did); a member the agent does
// not have is success.
func (b *Backend) Remove(ctx context.Context, m traffic.Member) error {
	if err := b.checkMember(m); err != nil {
		return fmt.Errorf("consul: remove %s: %w", m.InstanceID, err)
	}
	id := serviceID(m.Fleet, m.InstanceID)
	if err := b.deregister(ctx, id); err != nil {
		return fmt.Errorf("consul: remove %s: %w", m.InstanceID, err)
	}
	b.forget(id)
	return nil
}

// Sync is one level-based pass: it lists the agent's immutd-owned
// registrations of the service, registers every admitted member that is
// missing or different, sets every admitted member's TTL check from its
// Healthy (which also refreshes the TTL), and deregisters owned
// registrations whose instance keep does not know: at once for one this
// process admitted, otherwise only after Grace since New. A nil keep
// knows every instance. Services without immutd's marks are never touched.
func (b *Backend) Sync(ctx context.Context, admitted []traffic.Member, keep func(instanceID string) bool) error {
	services, checks, err := b.listOwned(ctx, "")
	if err != nil {
		return fmt.Errorf("consul: sync: %w", err)
	}
	var errs []error
	want := make(map[string]bool, len(admitted))
	for _, m := range admitted {
		reg, err := b.registration(m)
		if err != nil {
			errs = append(errs, fmt.Errorf("consul: sync %s: %w", m.InstanceID, err))
			continue
		}
		want[reg.ID] = true
		b.markSeen(reg.ID)
		if err := b.ensure(ctx, reg, m, services[reg.ID], checks[reg.ID]); err != nil {
			errs = append(errs, fmt.Errorf("consul: sync %s: %w", m.InstanceID, err))
			if errors.Is(err, traffic.ErrUnreachable) || ctx.Err() != nil {
				return errors.Join(errs...)
			}
		}
	}
	if keep == nil {
		return errors.Join(errs...)
	}
	inGrace := b.now().Sub(b.created) < b.cfg.Grace
	for _, id := range slices.Sorted(maps.Keys(services)) {
		s := services[id]
		inst := s.Meta[metaInstance]
		if want[id] || keep(inst) {
			continue
		}
		if inGrace && !b.wasSeen(id) {
			b.log.Debug("kept unknown registration during grace period", zap.String("service_id", id),
				zap.String("instance_id", inst), zap.Duration("grace", b.cfg.Grace))
			continue
		}
		if err := b.deregister(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("consul: sync %s: %w", inst, err))
			if errors.Is(err, traffic.ErrUnreachable) || ctx.Err() != nil {
				break
			}
			continue
		}
		b.forget(id)
		b.log.Info("deregistered service instance", zap.String("fleet", s.Meta[metaFleet]), zap.String("instance_id", inst),
			zap.String("service_id", id), zap.String("reason", "unknown_instance"))
	}
	return errors.Join(errs...)
}

// await reads health/service/<service>?passing with blocking queries until
// the service id is in the passing set (passing) or not (!passing), or
// ctx ends. It follows features/blocking.mdx: the index goes back to 0
// when it goes backwards, is clamped to at least 1 otherwise, and the loop
// is rate-limited by a token bucket.
func (b *Backend) await(ctx context.Context, id string, passing bool) error {
	lim := rate.NewLimiter(rate.Every(confirmEvery), confirmBurst)
	var index uint64
	reads, filtered := 0, false
	for {
		if !waitToken(ctx, lim) {
			return b.unconfirmed(ctx, id, passing, reads, filtered)
		}
		wait := maxBlockingWait
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, max(time.Until(dl), minBlockingWait))
		}
		rctx, cancel := b.request(ctx, wait)
		entries, meta, err := b.client.Health().Service(b.cfg.Service, "", true,
			(&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(rctx))
		cancel()
		reads++
		if err != nil {
			if ctx.Err() != nil {
				return b.unconfirmed(ctx, id, passing, reads, filtered)
			}
			return fmt.Errorf("read health/service/%s?passing: %w", b.cfg.Service, classify(ctx, err))
		}
		if inSet(entries, id) == passing {
			return nil
		}
		filtered = meta.ResultsFilteredByACLs
		index = nextIndex(index, meta.LastIndex)
	}
}

// waitToken waits for a token of lim, or until ctx ends (false). Unlike
// lim.Wait it does not give up early when the token comes after ctx's
// deadline: the caller's ctx, not the limiter, bounds the confirmation.
func waitToken(ctx context.Context, lim *rate.Limiter) bool {
	r := lim.Reserve()
	d := r.Delay()
	if d == 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		r.Cancel()
		return false
	}
}

// nextIndex is the index of the next blocking read after one that was sent
// with prev and answered with got.
func nextIndex(prev, got uint64) uint64 {
	if got < prev {
		return 0 // went backwards (snapshot restore, …): start over
	}
	return max(got, 1) // an index of 0 would not block
}

func inSet(entries []*api.ServiceEntry, id string) bool {
	for _, e := range entries {
		if e != nil && e.Service != nil && e.Service.ID == id {
			return true
		}
	}
	return false
}

func (b *Backend) unconfirmed(ctx context.Context, id string, passing bool, reads int, filtered bool) error {
	state := "not yet in"
	if !passing {
		state = "still in"
	}
	hint := ""
	if filtered {
		hint = "; Consul filtered the results by ACLs: the token may lack service:read or node:read"
	}
	cause := ctx.Err()
	return fmt.Errorf("not confirmed: %s %s health/service/%s?passing after %d %s%s: %w",
		id, state, b.cfg.Service, reads, plural(reads, "read", "reads"), hint, cause)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// CatalogAddresses returns the host:port of every instance of service
// (with tag, unless tag is "") in Consul's catalog, sorted and without
// duplicates. It reads with AllowStale, so any Consul server answers, even
// without a leader. It is meant for agents finding raft peers; the catalog
// carries no health.
func (b *Backend) CatalogAddresses(ctx context.Context, service, tag string) ([]string, error) {
	rctx, cancel := b.request(ctx, 0)
	defer cancel()
	entries, _, err := b.client.Catalog().Service(service, tag, (&api.QueryOptions{AllowStale: true}).WithContext(rctx))
	if err != nil {
		return nil, fmt.Errorf("consul: catalog service %s: %w", service, classify(ctx, err))
	}
	seen := map[string]bool{}
	for _, e := range entries {
		host := e.ServiceAddress
		if host == "" {
			host = e.Address
		}
		if host != "" && e.ServicePort > 0 {
			seen[net.JoinHostPort(host, strconv.Itoa(e.ServicePort))] = true
		}
	}
	out := make([]string, 0, len(seen))
	for a := range seen {
		out = append(out, a)
	}
	sort.Strings(out)
	return out, nil
}

// CatalogAddresses is Backend.CatalogAddresses with a client made from cfg
// for the one call (cfg.Service defaults to service).
func CatalogAddresses(ctx context.Context, cfg Config, service, tag string) ([]string, error) {
	if cfg.Service == "" {
		cfg.Service = service
	}
	b, err := New(cfg, nil)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return b.CatalogAddresses(ctx, service, tag)
}
