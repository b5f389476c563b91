package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/immutd/immutd/internal/secretfile"
)

// LoadAgent reads, defaults and validates the agent configuration file.
// Relative paths in it are resolved against the file's directory. Invalid
// content yields Diagnostics naming the path as given.
func LoadAgent(path string) (*Agent, error) {
	src, err := secretfile.ReadFile("agent config", path, maxAgentFileSize)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: agent config path: %w", err)
	}
	return parseAgent(path, abs, src, agentEnv{hostname: os.Hostname, dockerHost: os.Getenv("DOCKER_HOST")})
}

// maxAgentFileSize bounds the agent file.
const maxAgentFileSize = 1 << 20

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
	secured := false
	var cluster *section
	if b := s.block("cluster"); b != nil {
		cluster = s.child(b)
		bindGot, advertiseGot, secured = decodeCluster(cluster, &a.Cluster)
	}
	set.advertiseAddr = advertiseGot != missing
	var api *section
	if b := s.block("api"); b != nil {
		api = s.child(b)
		set.apiToken = decodeAPI(api, &a.API)
	}
	if b := s.block("limits"); b != nil {
		ls := s.child(b)
		ls.integer("max_instances", 1, maxInstancesLimit, &a.Limits.MaxInstances)
		ls.integer("max_launches_in_flight", 1, 10000, &a.Limits.MaxLaunchesInFlight)
		ls.rate("remediation_rate", &a.Limits.RemediationRate)
		ls.done()
	}

	var localBlock, dockerBlock, qemuBlock, simBlock *section
	simDirSet := false
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
			ps.text("log_dir", &a.Local.LogDir, checkNotEmpty)
			ps.size("log_max_size", minLocalLogMaxSize, &a.Local.LogMaxSize)
		case providerDocker:
			if dockerBlock != nil {
				d.errorf(b.TypeRange, ps.path, "duplicate provider block; the first is at %s", rangePos(dockerBlock.header))
			}
			dockerBlock = ps
			set.dockerHost = ps.text("host", &a.Docker.Host, checkDockerHost) != missing
			ps.str("cert_path", &a.Docker.CertPath)
			set.tlsVerify = ps.boolean("tls_verify", &a.Docker.TLSVerify) != missing
			ps.text("publish_host", &a.Docker.PublishHost, checkIP)
		case providerQEMU:
			if qemuBlock != nil {
				d.errorf(b.TypeRange, ps.path, "duplicate provider block; the first is at %s", rangePos(qemuBlock.header))
			}
			qemuBlock = ps
			decodeQEMUProvider(ps, &a.QEMU)
		case providerSim:
			if simBlock != nil {
				d.errorf(b.TypeRange, ps.path, "duplicate provider block; the first is at %s", rangePos(simBlock.header))
			}
			simBlock = ps
			simDirSet = decodeSimProvider(ps, &a.Sim)
		default:
			d.errorf(b.LabelRanges[0], ps.path, "unknown provider; expected %s", orList(providerNames))
			continue
		}
		ps.done()
	}
	s.done()

	a.DataDir = resolvePath(base, a.DataDir)
	a.FleetsDir = resolvePath(base, a.FleetsDir)
	a.Local.Dir = resolvePath(base, a.Local.Dir)
	a.Local.LogDir = resolvePath(base, a.Local.LogDir)
	a.QEMU.Dir = resolvePath(base, a.QEMU.Dir)
	a.QEMU.SlotDir = resolvePath(base, a.QEMU.SlotDir)
	a.QEMU.LogDir = resolvePath(base, a.QEMU.LogDir)
	a.Sim.Dir = resolvePath(base, a.Sim.Dir)
	a.Docker.CertPath = resolvePath(base, a.Docker.CertPath)
	a.Cluster.TLS.CAFile = resolvePath(base, a.Cluster.TLS.CAFile)
	a.Cluster.TLS.CertFile = resolvePath(base, a.Cluster.TLS.CertFile)
	a.Cluster.TLS.KeyFile = resolvePath(base, a.Cluster.TLS.KeyFile)
	a.Cluster.Insecure.TokenFile = resolvePath(base, a.Cluster.Insecure.TokenFile)
	a.API.TokenFile = resolvePath(base, a.API.TokenFile)
	a.API.TLSCertFile = resolvePath(base, a.API.TLSCertFile)
	a.API.TLSKeyFile = resolvePath(base, a.API.TLSKeyFile)
	if a.Cluster.Multi() && !secured {
		r, field := start, "cluster.tls"
		if cluster != nil {
			r, field = cluster.header, cluster.field("tls")
		}
		d.errorf(r, field, "a cluster of more than one agent needs mutual TLS: set tls { ca_file, cert_file, key_file } (`immutd tls init` makes them)")
	}
	if msg := simDefaults(&a, simDirSet); msg != "" {
		d.errorf(simBlock.header, simBlock.field("dir"), "%s", msg)
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
	if a.API.TLSCertFile == "" && !isLoopbackAddr(a.HTTPAddr) {
		r := start
		if a := body.Attributes["http_addr"]; a != nil {
			r = a.Expr.Range()
		}
		a.Warnings = append(a.Warnings, Diagnostic{Pos: rangePos(r), Field: "http_addr",
			Message: fmt.Sprintf("the API on %s is reachable from other hosts over plain HTTP: the API token travels in cleartext; set api { tls_cert_file, tls_key_file }", a.HTTPAddr)})
	}
	return &a, nil
}

// decodeQEMUProvider decodes provider "qemu" { ... }.
func decodeQEMUProvider(s *section, q *QEMUProvider) {
	q.Enabled = true
	s.text("dir", &q.Dir, checkNotEmpty)
	s.text("binary", &q.Binary, checkNotEmpty)
	s.oneOf("accel", &q.Accel, "auto", "kvm", "tcg")
	s.text("bind_host", &q.BindHost, checkIP)
	s.integer("boot_slots", 1, maxQEMUBootSlots, &q.BootSlots)
	s.text("slot_dir", &q.SlotDir, checkNotEmpty)
	s.duration("boot_wait", time.Second, time.Hour, &q.BootWait)
	s.boolean("outbound", &q.Outbound)
	s.text("log_dir", &q.LogDir, checkNotEmpty)
	s.size("log_max_size", minQEMULogMaxSize, &q.LogMaxSize)
	s.integer("log_keep", 1, 100000, &q.LogKeep)
	s.duration("log_max_age", time.Minute, 10*365*24*time.Hour, &q.LogMaxAge)
}

// decodeCluster decodes the cluster block. Add new cluster settings here.
// secured says whether a tls or insecure_plaintext block is present
// (valid or not).
func decodeCluster(s *section, c *ClusterConfig) (bind, advertise got, secured bool) {
	bind = s.text("bind_addr", &c.BindAddr, checkListenAddr)
	advertise = s.text("advertise_addr", &c.AdvertiseAddr, checkDialAddr)
	s.integer("bootstrap_expect", 1, maxClusterSize, &c.BootstrapExpect)
	s.strList("join", &c.Join, checkDialAddr)
	if b := s.block("join_consul"); b != nil {
		js := s.child(b)
		j := &ConsulJoin{Address: DefaultConsulAddress, Service: DefaultJoinService}
		js.text("address", &j.Address, checkConsulAddress)
		js.text("service", &j.Service, checkConsulService)
		decodeConsulTLS(js, j.Address, &j.TokenFile, &j.CAFile, &j.CertFile, &j.KeyFile, &j.TLSServerName)
		js.done()
		c.JoinConsul = j
	}
	if f, g := s.number("raft_multiplier", "a number from 0.1 to 10"); g == valid {
		m, _ := f.Float64()
		if m < 0.1 || m > 10 {
			s.fail("raft_multiplier", "must be from 0.1 to 10, got %s", formatBig(f))
		} else {
			c.RaftMultiplier = m
		}
	}
	s.text("health_quorum", &c.HealthQuorum, checkHealthQuorum)
	if s.integer("probe_agents", 1, maxClusterSize, &c.ProbeAgents) == valid {
		if n, err := strconv.Atoi(c.HealthQuorum); err == nil && n > c.ProbeAgents {
			s.fail("probe_agents", "health_quorum %d needs %d agreeing agents, but only %d probe each instance", n, n, c.ProbeAgents)
		}
	}
	s.boolean("leave_on_terminate", &c.LeaveOnTerminate)
	var tlsBlock *section
	if b := s.block("tls"); b != nil {
		ts := s.child(b)
		tlsBlock = ts
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
	if b := s.block("insecure_plaintext"); b != nil {
		is := s.child(b)
		if is.text("token_file", &c.Insecure.TokenFile, checkNotEmpty) == missing {
			is.required("token_file", "a file with the shared cluster token, readable by the agent's user only")
		}
		is.done()
		switch {
		case tlsBlock != nil:
			s.d.errorf(b.TypeRange, is.path, "insecure_plaintext and tls exclude each other; remove insecure_plaintext")
		default:
			// Plaintext is refused anywhere but on loopback: every
			// address this agent listens on or dials must be one.
			for _, f := range []struct {
				name string
				vals []string
			}{{"bind_addr", []string{c.BindAddr}}, {"advertise_addr", []string{c.AdvertiseAddr}}, {"join", c.Join}} {
				for _, v := range f.vals {
					if v != "" && !isLoopbackAddr(v) {
						s.fail(f.name, "insecure_plaintext works on loopback only (127.0.0.0/8 or ::1), got %q; use tls { ... } between hosts", v)
						break
					}
				}
			}
		}
	}
	s.done()
	return bind, advertise, tlsBlock != nil || s.body != nil && hasBlock(s.body, "insecure_plaintext")
}

func hasBlock(body *hclsyntax.Body, typ string) bool {
	for _, b := range body.Blocks {
		if b.Type == typ {
			return true
		}
	}
	return false
}

// isLoopbackAddr says whether host:port names a loopback IP address.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// decodeAPI decodes the api block; it reports whether token_file is set.
func decodeAPI(s *section, c *APIConfig) bool {
	tokenGot := s.text("token_file", &c.TokenFile, checkNotEmpty)
	certGot := s.text("tls_cert_file", &c.TLSCertFile, checkNotEmpty)
	keyGot := s.text("tls_key_file", &c.TLSKeyFile, checkNotEmpty)
	if (certGot == missing) != (keyGot == missing) {
		s.fail("tls_cert_file", "tls_cert_file and tls_key_file go together")
	}
	s.done()
	return tokenGot == valid
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
