// Package registry builds the traffic backends of each fleet from its
// committed traffic spec and keeps them open between passes: the
// executor and the leader ask it for a fleet's backends at every step,
// and it builds new ones only when the fleet's spec changes.
package registry

import (
	"fmt"
	"reflect"
	"sync"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic"
	"github.com/immutd/immutd/internal/traffic/consul"
	"github.com/immutd/immutd/internal/traffic/file"
	"github.com/immutd/immutd/internal/traffic/haproxy"
)

// Registry implements reconcile.Backends.
type Registry struct {
	log *zap.Logger

	mu     sync.Mutex
	fleets map[string]*entry
}

type entry struct {
	spec     state.TrafficSpec
	backends []traffic.Backend
}

// New returns an empty registry.
func New(log *zap.Logger) *Registry {
	if log == nil {
		log = zap.NewNop()
	}
	return &Registry{log: log, fleets: map[string]*entry{}}
}

// For returns the backends of the fleet, in the order the spec lists
// them: target files, HAProxy, Consul.
func (r *Registry) For(d *state.DesiredFleet) ([]traffic.Backend, error) {
	name := d.Spec.Name
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.fleets[name]
	if d.Spec.Traffic == nil {
		if e != nil {
			closeAll(e.backends)
			delete(r.fleets, name)
		}
		return nil, nil
	}
	if e != nil && reflect.DeepEqual(e.spec, *d.Spec.Traffic) {
		return e.backends, nil
	}
	bs, err := build(name, d.Spec.Traffic, r.log)
	if err != nil {
		return nil, fmt.Errorf("fleet %s: %w", name, err)
	}
	if e != nil {
		closeAll(e.backends)
	}
	r.fleets[name] = &entry{spec: *d.Spec.Traffic, backends: bs}
	return bs, nil
}

// named shows a backend under the name the fleet file gives it.
type named struct {
	traffic.Backend
	name string
}

func (n named) Name() string { return n.name }

// Close closes every backend.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, e := range r.fleets {
		closeAll(e.backends)
		delete(r.fleets, name)
	}
}

func closeAll(bs []traffic.Backend) {
	for _, b := range bs {
		_ = b.Close()
	}
}

func build(fleet string, t *state.TrafficSpec, log *zap.Logger) ([]traffic.Backend, error) {
	var out []traffic.Backend
	fail := func(err error) ([]traffic.Backend, error) {
		closeAll(out)
		return nil, err
	}
	for _, f := range t.Files {
		b, err := file.New(f.Name, f.Path, fleet, log.Named("file"))
		if err != nil {
			return fail(err)
		}
		out = append(out, b)
	}
	for _, h := range t.HAProxy {
		b, err := haproxy.New(haproxy.Config{Socket: h.Socket, Backend: h.Backend, Check: h.Check}, log.Named("haproxy"))
		if err != nil {
			return fail(err)
		}
		out = append(out, named{b, fmt.Sprintf("haproxy %q", h.Name)})
	}
	for _, c := range t.Consul {
		b, err := consul.New(consul.Config{Address: c.Address, Service: c.Service, Fleet: fleet, Tags: c.Tags, Meta: c.Meta,
			TokenFile: c.TokenFile, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile, TLSServerName: c.TLSServerName}, log.Named("consul"))
		if err != nil {
			return fail(err)
		}
		out = append(out, named{b, fmt.Sprintf("consul %q", c.Name)})
	}
	return out, nil
}
