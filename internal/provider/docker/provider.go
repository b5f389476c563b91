package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/docker/docker/client"
	"github.com/docker/go-connections/tlsconfig"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/hostdir"
)

// DefaultHost is the engine endpoint when Options.Host is empty.
const DefaultHost = "unix:///var/run/docker.sock"

// DefaultPublishHost is the host address container ports are published
// on when Options.PublishHost is empty.
const DefaultPublishHost = "127.0.0.1"

// Defaults for a fleet without a launch { docker { ... } } block.
const (
	DefaultPort        = 8080
	NetworkBridge      = "bridge"
	NetworkHost        = "host"
	defaultNetworkMode = NetworkBridge
)

// Labels immutd puts on every container it launches. LabelImage and
// LabelTemplate record what the container was launched for; the image
// it really runs is read from the engine.
const (
	LabelManaged  = "io.immutd.managed"
	LabelFleet    = "io.immutd.fleet"
	LabelInstance = "io.immutd.instance"
	LabelImage    = "io.immutd.image"
	LabelTemplate = "io.immutd.template"
)

// Environment variables the provider sets in every container; they win
// over the fleet's launch env.
const (
	EnvInstanceID  = instance.EnvInstanceID
	EnvFleet       = instance.EnvFleet
	EnvImageDigest = instance.EnvImageDigest
	EnvPort        = instance.EnvPort
)

// NamePrefix starts the name of every container immutd launches; the
// rest of the name is the instance id.
const NamePrefix = "immutd-"

// ErrNotFound is returned (wrapped) by Inspect for an instance whose
// container is gone.
var ErrNotFound = fmt.Errorf("no such container: %w", instance.ErrGone)

// ErrImageNotFound is returned (wrapped) by Resolve for an image
// reference the engine does not have.
var ErrImageNotFound = errors.New("image not found")

// Options configures a Provider.
type Options struct {
	// Host is the engine endpoint, as DOCKER_HOST: "unix:///path" or
	// "tcp://host:port". Default: DefaultHost.
	Host string
	// CertPath is a directory holding ca.pem, cert.pem and key.pem, as
	// DOCKER_CERT_PATH. When set, the provider talks TLS to the engine
	// and presents cert.pem/key.pem as its client certificate.
	CertPath string
	// TLSVerify verifies the engine's certificate against ca.pem, as
	// DOCKER_TLS_VERIFY. It needs CertPath.
	TLSVerify bool
	// PublishHost is the host address container ports are published on
	// and probes dial. Default 127.0.0.1.
	PublishHost string
	// KeptLogDir, when set, keeps the last 256 KiB of the output of each
	// container the provider removes, for 7 days, at most 500 of them
	// (hostdir.Archive): the engine's own logs go with the container.
	KeptLogDir string
	// Logger receives the provider's logs. Default: no logging.
	Logger *zap.Logger
}

// Provider runs instances as containers on one Docker engine. Its
// methods are safe for concurrent use. The engine, not the provider,
// holds all state: container names make launches idempotent and labels
// identify immutd's containers, so an agent restart or a new leader
// finds every container again.
type Provider struct {
	cli         *client.Client
	host        string
	publishHost string
	log         *zap.Logger
	kept        *hostdir.Archive // nil: output is not kept

	// Reconnect backoff of Watch: first wait, cap, and how long a stream
	// must have lived for the wait to start over from the first one.
	watchBackoff    time.Duration
	watchMaxBackoff time.Duration
	watchStable     time.Duration
}

// New returns a provider for the engine at opts.Host. It does not
// contact the engine: an engine that is down makes the calls fail, not
// New. The API version is negotiated with the engine on the first call.
func New(opts Options) (*Provider, error) {
	host := opts.Host
	if host == "" {
		host = DefaultHost
	}
	if _, err := client.ParseHostURL(host); err != nil {
		return nil, fmt.Errorf("docker: host %q: want unix:///path or tcp://host:port", host)
	}
	publish := opts.PublishHost
	if publish == "" {
		publish = DefaultPublishHost
	}
	if net.ParseIP(publish) == nil {
		return nil, fmt.Errorf("docker: publish host %q is not an IP address", publish)
	}
	copts := []client.Opt{client.WithAPIVersionNegotiation()}
	switch {
	case opts.CertPath != "":
		tc, err := tlsconfig.Client(tlsconfig.Options{
			CAFile:             caFile(opts),
			CertFile:           filepath.Join(opts.CertPath, "cert.pem"),
			KeyFile:            filepath.Join(opts.CertPath, "key.pem"),
			InsecureSkipVerify: !opts.TLSVerify,
			ExclusiveRootPools: true,
		})
		if err != nil {
			return nil, fmt.Errorf("docker: tls from %s: %w", opts.CertPath, err)
		}
		copts = append(copts, client.WithHTTPClient(&http.Client{
			Transport:     &http.Transport{TLSClientConfig: tc, MaxIdleConns: 6, IdleConnTimeout: 30 * time.Second},
			CheckRedirect: client.CheckRedirect,
		}))
	case opts.TLSVerify:
		return nil, errors.New("docker: tls_verify needs cert_path (a directory with ca.pem, cert.pem and key.pem)")
	}
	// The host goes last: it configures the dialer of the transport the
	// options above chose.
	copts = append(copts, client.WithHost(host))
	cli, err := client.NewClientWithOpts(copts...)
	if err != nil {
		return nil, fmt.Errorf("docker: client for %s: %w", host, err)
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	var kept *hostdir.Archive
	if opts.KeptLogDir != "" {
		if kept, err = hostdir.NewArchive(opts.KeptLogDir, 0, 0, 0); err != nil {
			return nil, fmt.Errorf("docker: %w", err)
		}
	}
	return &Provider{
		kept:            kept,
		cli:             cli,
		host:            host,
		publishHost:     publish,
		log:             log.Named("docker"),
		watchBackoff:    250 * time.Millisecond,
		watchMaxBackoff: 15 * time.Second,
		watchStable:     30 * time.Second,
	}, nil
}

// caFile is ca.pem in the cert directory when the engine's certificate
// is verified; without verification no CA is needed.
func caFile(opts Options) string {
	if !opts.TLSVerify {
		return ""
	}
	return filepath.Join(opts.CertPath, "ca.pem")
}

// Host returns the engine endpoint the provider talks to.
func (p *Provider) Host() string { return p.host }

// PublishHost returns the host address container ports are published on.
func (p *Provider) PublishHost() string { return p.publishHost }

// Close releases the client's idle connections.
func (p *Provider) Close() error { return p.cli.Close() }

// containerName is the deterministic name of the instance's container.
func containerName(id string) string { return NamePrefix + id }

func zapID(id string) zap.Field { return zap.String("instance_id", id) }

// CheckRef resolves an image reference again without pinning it, so the
// leader can tell a tag that moved to other content (leader.RefChecker).
func (p *Provider) CheckRef(ctx context.Context, ref string) (string, error) {
	return p.Resolve(ctx, ref)
}
