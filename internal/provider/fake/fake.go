// Package fake is an in-memory provider for unit tests of the parts
// above the providers (the leader term, the agent). Its instances are
// records in a map; with Serve set, each one also answers HTTP on a
// loopback port of its own, so that real probes can judge it.
//
// It is a test double, not a provider: no fleet file can name it, and
// nothing but tests constructs it.
package fake

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// Provider is the fake provider. Its zero value is not usable; use New.
type Provider struct {
	// Serve starts a loopback HTTP server per launched instance that
	// answers every path with 200, or 503 once SetHealthy(id, false).
	Serve bool

	mu         sync.Mutex
	instances  map[string]*inst
	digest     string
	listErr    error
	launchErr  error
	findings   map[string]*instance.Finding
	launched   []string
	terminated []string
	resolved   []string
	lists      int
}

type inst struct {
	obs     instance.Observed
	ln      net.Listener
	srv     *http.Server
	healthy bool
}

// New returns an empty provider whose images resolve to digest.
func New(digest string) *Provider {
	return &Provider{instances: map[string]*inst{}, findings: map[string]*instance.Finding{}, digest: digest}
}

// List implements reconcile.Provider.
func (p *Provider) List(context.Context) ([]instance.Observed, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lists++
	if p.listErr != nil {
		return nil, p.listErr
	}
	out := make([]instance.Observed, 0, len(p.instances))
	for _, in := range p.instances {
		out = append(out, in.obs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Launch implements reconcile.Provider; a second launch of an id finds
// the first instance.
func (p *Provider) Launch(_ context.Context, r instance.LaunchRequest) (instance.Observed, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if in, ok := p.instances[r.InstanceID]; ok {
		return in.obs, nil
	}
	if p.launchErr != nil {
		return instance.Observed{}, p.launchErr
	}
	in := &inst{healthy: true, obs: instance.Observed{ID: r.InstanceID, Fleet: r.Fleet, ImageDigest: r.ImageDigest,
		TemplateHash: r.TemplateHash, Phase: instance.Running, StartedAt: time.Now(), ProviderRef: "fake-" + r.InstanceID}}
	if p.Serve {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return instance.Observed{}, err
		}
		id := r.InstanceID
		in.ln = ln
		in.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if !p.Healthy(id) {
				http.Error(w, "unhealthy", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})}
		go func() { _ = in.srv.Serve(ln) }()
		in.obs.Address = ln.Addr().String()
	}
	p.instances[r.InstanceID] = in
	p.launched = append(p.launched, r.InstanceID)
	return in.obs, nil
}

// Terminate implements reconcile.Provider; a missing instance is gone
// already, which is success.
func (p *Provider) Terminate(_ context.Context, id string, _ time.Duration) error {
	p.mu.Lock()
	in, ok := p.instances[id]
	delete(p.instances, id)
	if ok {
		p.terminated = append(p.terminated, id)
	}
	p.mu.Unlock()
	if ok && in.srv != nil {
		_ = in.srv.Close()
	}
	return nil
}

// Resolve pins every reference to the provider's digest.
func (p *Provider) Resolve(_ context.Context, ref string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resolved = append(p.resolved, ref)
	if p.digest == "" {
		return "", errors.New("fake: no such image " + ref)
	}
	return p.digest, nil
}

// Inspect reports the finding set with SetFinding.
func (p *Provider) Inspect(_ context.Context, o instance.Observed, _ []string) (*instance.Finding, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.instances[o.ID]; !ok {
		return nil, fmt.Errorf("fake: %s: %w", o.ID, instance.ErrGone)
	}
	return p.findings[o.ID], nil
}

// Close stops the servers of every instance left.
func (p *Provider) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, in := range p.instances {
		if in.srv != nil {
			_ = in.srv.Close()
		}
	}
}

// SetHealthy makes an instance's server answer 200 (true) or 503.
func (p *Provider) SetHealthy(id string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if in := p.instances[id]; in != nil {
		in.healthy = ok
	}
}

// Healthy says what an instance's server answers.
func (p *Provider) Healthy(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := p.instances[id]
	return in != nil && in.healthy
}

// SetFinding makes Inspect report f for an instance (nil: clean).
func (p *Provider) SetFinding(id string, f *instance.Finding) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.findings[id] = f
}

// SetListError makes List fail with err (nil: succeed).
func (p *Provider) SetListError(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.listErr = err
}

// SetLaunchError makes new launches fail with err (nil: succeed).
func (p *Provider) SetLaunchError(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.launchErr = err
}

// SetDigest changes what references resolve to.
func (p *Provider) SetDigest(d string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.digest = d
}

// Exit marks an instance exited, as a crash would.
func (p *Provider) Exit(id, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if in := p.instances[id]; in != nil {
		in.obs.Phase, in.obs.ExitReason = instance.Exited, reason
	}
}

// Running lists the ids of running instances, sorted.
func (p *Provider) Running() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for id, in := range p.instances {
		if in.obs.Phase == instance.Running {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// Calls returns the ids launched and terminated so far, the references
// resolved and the number of List calls.
func (p *Provider) Calls() (launched, terminated, resolved []string, lists int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.launched...), append([]string(nil), p.terminated...), append([]string(nil), p.resolved...), p.lists
}
