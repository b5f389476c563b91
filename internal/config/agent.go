package config

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/hcl/v2"
)

// LoadAgent reads, defaults and validates the agent configuration file.
// Relative paths in it are resolved against the file's directory. Invalid
// content yields Diagnostics naming the path as given.
func LoadAgent(path string) (*Agent, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: read agent config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: agent config path: %w", err)
	}
	return parseAgent(path, abs, src, agentEnv{hostname: os.Hostname, dockerHost: os.Getenv("DOCKER_HOST")})
}

// parseAgent decodes the agent file src; display names it in messages and
// abs is its absolute path.
func parseAgent(display, abs string, src []byte, env agentEnv) (*Agent, error) {
	d := &decoder{}
	body := d.parse(src, display)
	if body == nil {
		return nil, d.diags.sorted()
	}
	start := hcl.Range{Filename: display, Start: hcl.InitialPos, End: hcl.InitialPos}
	s := d.section("", start, body)
	base := filepath.Dir(abs)

	a := defaultAgent()
	a.File = abs
	var set agentExplicit
	set.nodeName = s.text("node_name", &a.NodeName, checkNodeName) != missing
	if s.text("data_dir", &a.DataDir, checkNotEmpty) == missing {
		s.required("data_dir", "the directory for raft state, snapshots and provider state")
	}
	s.text("http_addr", &a.HTTPAddr, checkListenAddr)
	if s.text("fleets_dir", &a.FleetsDir, checkNotEmpty) == missing {
		s.required("fleets_dir", "the watched directory of *.hcl fleet files")
	}
	s.oneOf("log_level", &a.LogLevel, "debug", "info", "warn", "error")
	s.boolean("auto_drain_removed_fleets", &a.AutoDrainRemovedFleets)
	s.duration("reconcile_interval", positive, maxReconcileInterval, &a.ReconcileInterval)

	bindGot, advertiseGot := missing, missing
	var cluster *section
	if b := s.block("cluster"); b != nil {
		cluster = s.child(b)
		bindGot, advertiseGot = decodeCluster(cluster, &a.Cluster)
	}
	set.advertiseAddr = advertiseGot != missing
	if b := s.block("api"); b != nil {
		decodeAPI(s.child(b), &a.API)
	}

	var localBlock, dockerBlock *section
	for _, b := range s.labelled("provider", "provider name") {
		ps := s.child(b)
		switch b.Labels[0] {
		case providerLocal:
			if localBlock != nil {
				d.errorf(b.TypeRange, ps.path, "duplicate provider block; the first is at %s", rangePos(localBlock.header))
			}
			localBlock = ps
			set.localDir = ps.text("dir", &a.Local.Dir, checkNotEmpty) != missing
			ps.text("bind_host", &a.Local.BindHost, checkIP)
		case providerDocker:
			if dockerBlock != nil {
				d.errorf(b.TypeRange, ps.path, "duplicate provider block; the first is at %s", rangePos(dockerBlock.header))
			}
			dockerBlock = ps
			set.dockerHost = ps.text("host", &a.Docker.Host, checkDockerHost) != missing
			ps.str("cert_path", &a.Docker.CertPath)
			set.tlsVerify = ps.boolean("tls_verify", &a.Docker.TLSVerify) != missing
			ps.text("publish_host", &a.Docker.PublishHost, checkIP)
		default:
			d.errorf(b.LabelRanges[0], ps.path, "unknown provider; expected %s", orList([]string{providerLocal, providerDocker}))
			continue
		}
		ps.done()
	}
	s.done()

	a.DataDir = resolvePath(base, a.DataDir)
	a.FleetsDir = resolvePath(base, a.FleetsDir)
	a.Local.Dir = resolvePath(base, a.Local.Dir)
	a.Docker.CertPath = resolvePath(base, a.Docker.CertPath)
	a.Cluster.TLS.CAFile = resolvePath(base, a.Cluster.TLS.CAFile)
	a.Cluster.TLS.CertFile = resolvePath(base, a.Cluster.TLS.CertFile)
	a.Cluster.TLS.KeyFile = resolvePath(base, a.Cluster.TLS.KeyFile)
	a.API.TokenFile = resolvePath(base, a.API.TokenFile)
	a.API.TLSCertFile = resolvePath(base, a.API.TLSCertFile)
	a.API.TLSKeyFile = resolvePath(base, a.API.TLSKeyFile)
	if a.Cluster.Multi() && !a.Cluster.TLS.Enabled() {
		r, field := start, "cluster.tls"
		if cluster != nil {
			r, field = cluster.header, cluster.field("tls")
		}
		d.errorf(r, field, "a cluster of more than one agent needs mutual TLS: set tls { ca_file, cert_file, key_file } (`immutd tls init` makes them)")
	}
	if err := deriveAgentDefaults(&a, set, env); err != nil {
		d.errorf(start, "node_name", "not set and the hostname is unknown (%v); set node_name", err)
	}
	if !set.advertiseAddr && bindGot != invalid {
		if err := checkDialAddr(a.Cluster.AdvertiseAddr); err != nil {
			r, field := start, "cluster.bind_addr"
			if cluster != nil {
				r, field = cluster.exprRange("bind_addr"), cluster.field("bind_addr")
			}
			d.errorf(r, field, "peers cannot dial %q, the default advertise_addr; set cluster.advertise_addr to an address they can reach", a.Cluster.BindAddr)
		}
	}
	if len(d.diags) > 0 {
		return nil, d.diags.sorted()
	}
	return &a, nil
}

// decodeCluster decodes the cluster block. Add new cluster settings here.
func decodeCluster(s *section, c *ClusterConfig) (bind, advertise got) {
	bind = s.text("bind_addr", &c.BindAddr, checkListenAddr)
	advertise = s.text("advertise_addr", &c.AdvertiseAddr, checkDialAddr)
	s.integer("bootstrap_expect", 1, maxClusterSize, &c.BootstrapExpect)
	s.strList("join", &c.Join, checkDialAddr)
	if f, g := s.number("raft_multiplier", "a number from 0.1 to 10"); g == valid {
		m, _ := f.Float64()
		if m < 0.1 || m > 10 {
			s.fail("raft_multiplier", "must be from 0.1 to 10, got %s", formatBig(f))
		} else {
			c.RaftMultiplier = m
		}
	}
	s.text("health_quorum", &c.HealthQuorum, checkHealthQuorum)
	s.boolean("leave_on_terminate", &c.LeaveOnTerminate)
	if b := s.block("tls"); b != nil {
		ts := s.child(b)
		for _, f := range []struct {
			name string
			dst  *string
		}{{"ca_file", &c.TLS.CAFile}, {"cert_file", &c.TLS.CertFile}, {"key_file", &c.TLS.KeyFile}} {
			if ts.text(f.name, f.dst, checkNotEmpty) == missing {
				ts.required(f.name, "a PEM file")
			}
		}
		ts.text("server_name", &c.TLS.ServerName, checkNotEmpty)
		ts.done()
	}
	s.done()
	return bind, advertise
}

// decodeAPI decodes the api block.
func decodeAPI(s *section, c *APIConfig) {
	s.text("token_file", &c.TokenFile, checkNotEmpty)
	certGot := s.text("tls_cert_file", &c.TLSCertFile, checkNotEmpty)
	keyGot := s.text("tls_key_file", &c.TLSKeyFile, checkNotEmpty)
	if (certGot == missing) != (keyGot == missing) {
		s.fail("tls_cert_file", "tls_cert_file and tls_key_file go together")
	}
	s.done()
}

// resolvePath makes p absolute against base; "" stays "".
func resolvePath(base, p string) string {
	if p == "" {
		return ""
	}
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(base, p)
}
