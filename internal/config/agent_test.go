package config

import (
	"errors"
	"github.com/immutd/immutd/internal/quantity"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func fixedEnv(dockerHost string) agentEnv {
	return agentEnv{hostname: func() (string, error) { return "host-a", nil }, dockerHost: dockerHost}
}

func parseAgentFile(t *testing.T, path string, env agentEnv) (*Agent, error) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseAgent(path, abs(t, path), src, env)
}

func TestAgentDefaults(t *testing.T) {
	const path = "testdata/agent/valid/minimal.hcl"
	base := abs(t, "testdata/agent/valid")
	got, err := parseAgentFile(t, path, fixedEnv(""))
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	want := &Agent{
		File:              abs(t, path),
		NodeName:          "host-a",
		DataDir:           filepath.Join(base, "data"),
		HTTPAddr:          "127.0.0.1:7979",
		FleetsDir:         filepath.Join(base, "fleets.d"),
		LogLevel:          "info",
		ReconcileInterval: time.Second,
		Cluster: ClusterConfig{BindAddr: "127.0.0.1:7980", AdvertiseAddr: "127.0.0.1:7980", BootstrapExpect: 1, RaftMultiplier: 1,
			HealthQuorum: "majority", TLS: ClusterTLS{ServerName: "server.immutd"}},
		API:    APIConfig{TokenFile: filepath.Join(base, "data", "api-token")},
		Limits: Limits{MaxInstances: 10000, MaxLaunchesInFlight: 16, RemediationRate: DefaultRemediationRate},
		Local:  LocalProvider{Dir: filepath.Join(base, "data", "local"), BindHost: "127.0.0.1", LogDir: filepath.Join(base, "data", "local", "logs"), LogMaxSize: 16 << 20},
		Docker: DockerProvider{Host: "unix:///var/run/docker.sock", PublishHost: "127.0.0.1"},
		QEMU:   QEMUProvider{Accel: "auto", BindHost: "127.0.0.1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("agent differs\n--- got\n%s\n--- want\n%s", dump(got), dump(want))
	}
}

func TestAgentFull(t *testing.T) {
	const path = "testdata/agent/valid/full.hcl"
	base := abs(t, "testdata/agent/valid")
	got, err := parseAgentFile(t, path, fixedEnv("tcp://ignored:2375"))
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	// The API listens on all interfaces without TLS: a warning, not an error.
	wantWarn := path + ":3:14: http_addr: the API on 0.0.0.0:8080 is reachable from other hosts over plain HTTP: the API token travels in cleartext; set api { tls_cert_file, tls_key_file }"
	if got.Warnings.Error() != wantWarn {
		t.Errorf("warnings:\n got %s\nwant %s", got.Warnings.Error(), wantWarn)
	}
	got.Warnings = nil
	want := &Agent{
		File:                   abs(t, path),
		NodeName:               "node-1",
		DataDir:                "/var/lib/immutd",
		HTTPAddr:               "0.0.0.0:8080",
		FleetsDir:              abs(t, "testdata/agent/fleets"),
		LogLevel:               "debug",
		AutoDrainRemovedFleets: true,
		ReconcileInterval:      500 * time.Millisecond,
		Cluster: ClusterConfig{BindAddr: "0.0.0.0:7980", AdvertiseAddr: "10.0.0.5:7980", BootstrapExpect: 1, RaftMultiplier: 1,
			HealthQuorum: "majority", TLS: ClusterTLS{ServerName: "server.immutd"}},
		API:    APIConfig{TokenFile: "/var/lib/immutd/api-token"},
		Limits: Limits{MaxInstances: 10000, MaxLaunchesInFlight: 16, RemediationRate: DefaultRemediationRate},
		Local:  LocalProvider{Dir: filepath.Join(base, "local-store"), BindHost: "::1", DirSet: true, LogDir: "/var/log/immutd", LogMaxSize: 1 << 20},
		Docker: DockerProvider{Host: "tcp://10.0.0.9:2376", CertPath: filepath.Join(base, "certs"),
			TLSVerify: false, PublishHost: "10.0.0.5"},
		QEMU: QEMUProvider{Enabled: true, Dir: filepath.Join(base, "vms"), Accel: "tcg", BindHost: "127.0.0.1", BootSlots: 3,
			BootWait: 90 * time.Second, Outbound: true, LogMaxSize: 8 << 20, LogKeep: 50, LogMaxAge: 48 * time.Hour},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("agent differs\n--- got\n%s\n--- want\n%s", dump(got), dump(want))
	}
}

func TestAgentDockerDefaults(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.hcl")
	base := "data_dir = \"/d\"\nfleets_dir = \"/f\"\n"
	tests := []struct {
		name, src, envHost string
		want               DockerProvider
	}{
		{"socket by default", base, "",
			DockerProvider{Host: DefaultDockerHost, PublishHost: "127.0.0.1"}},
		{"DOCKER_HOST when set", base, "tcp://engine:2376",
			DockerProvider{Host: "tcp://engine:2376", PublishHost: "127.0.0.1"}},
		{"host attribute beats DOCKER_HOST", base + "provider \"docker\" {\n host = \"unix:///run/d.sock\"\n}\n", "tcp://engine:2376",
			DockerProvider{Host: "unix:///run/d.sock", PublishHost: "127.0.0.1"}},
		{"cert_path turns tls_verify on", base + "provider \"docker\" {\n cert_path = \"/certs\"\n}\n", "",
			DockerProvider{Host: DefaultDockerHost, CertPath: "/certs", TLSVerify: true, PublishHost: "127.0.0.1"}},
		{"tls_verify without cert_path", base + "provider \"docker\" {\n tls_verify = true\n}\n", "",
			DockerProvider{Host: DefaultDockerHost, TLSVerify: true, PublishHost: "127.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writeFile(t, path, tt.src)
			a, err := parseAgentFile(t, path, fixedEnv(tt.envHost))
			if err != nil {
				t.Fatalf("unexpected error:\n%v", err)
			}
			if a.Docker != tt.want {
				t.Errorf("docker %+v, want %+v", a.Docker, tt.want)
			}
		})
	}
}

func TestLoadAgentUsesEnvironment(t *testing.T) {
	t.Setenv("DOCKER_HOST", "tcp://from-env:2376")
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no hostname: %v", err)
	}
	a, err := LoadAgent("testdata/agent/valid/minimal.hcl")
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	if a.NodeName != host {
		t.Errorf("node name %q, want the hostname %q", a.NodeName, host)
	}
	if a.Docker.Host != "tcp://from-env:2376" {
		t.Errorf("docker host %q, want DOCKER_HOST", a.Docker.Host)
	}
	if !filepath.IsAbs(a.File) || !filepath.IsAbs(a.DataDir) || !filepath.IsAbs(a.FleetsDir) {
		t.Errorf("paths not absolute: %+v", a)
	}
}

func TestAgentRelativePathsFollowTheFile(t *testing.T) {
	// The same file loaded from another working directory resolves to the same paths.
	want, err := LoadAgent("testdata/agent/valid/full.hcl")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir("testdata")
	got, err := LoadAgent("agent/valid/full.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if got.FleetsDir != want.FleetsDir || got.Local.Dir != want.Local.Dir || got.Docker.CertPath != want.Docker.CertPath {
		t.Errorf("paths depend on the working directory: %+v vs %+v", got, want)
	}
}

func TestAgentHostnameFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.hcl")
	writeFile(t, path, "data_dir = \"/d\"\nfleets_dir = \"/f\"\n")
	env := agentEnv{hostname: func() (string, error) { return "", errors.New("no uts") }}
	_, err := parseAgentFile(t, path, env)
	want := path + ":1:1: node_name: not set and the hostname is unknown (no uts); set node_name"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestAgentInvalid(t *testing.T) {
	const dir = "testdata/agent/invalid"
	files, err := filepath.Glob(filepath.Join(dir, "*.hcl"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".hcl"), func(t *testing.T) {
			_, err := parseAgentFile(t, path, fixedEnv(""))
			checkGolden(t, strings.TrimSuffix(path, ".hcl")+".err", err)
		})
	}
}

func TestLoadAgentMissingFile(t *testing.T) {
	_, err := LoadAgent(filepath.Join(t.TempDir(), "absent.hcl"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want an error wrapping fs.ErrNotExist", err)
	}
}

func TestAgentClusterBlock(t *testing.T) {
	const path = "testdata/agent/valid/cluster.hcl"
	base := abs(t, "testdata/agent/valid")
	got, err := parseAgentFile(t, path, fixedEnv(""))
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	want := ClusterConfig{BindAddr: "10.0.0.1:7980", AdvertiseAddr: "10.0.0.1:7980", BootstrapExpect: 3,
		Join: []string{"10.0.0.2:7980", "10.0.0.3:7980"}, RaftMultiplier: 2.5, HealthQuorum: "all", LeaveOnTerminate: true,
		TLS: ClusterTLS{CAFile: filepath.Join(base, "tls/ca.pem"), CertFile: filepath.Join(base, "tls/node-1.pem"),
			KeyFile: filepath.Join(base, "tls/node-1-key.pem"), ServerName: "server.prod.immutd"}}
	if !reflect.DeepEqual(got.Cluster, want) {
		t.Errorf("cluster:\n got %+v\nwant %+v", got.Cluster, want)
	}
	wantAPI := APIConfig{TokenFile: filepath.Join(base, "api-token"), TokenFileSet: true, TLSCertFile: filepath.Join(base, "tls/api.pem"), TLSKeyFile: filepath.Join(base, "tls/api-key.pem")}
	if got.API != wantAPI {
		t.Errorf("api: got %+v want %+v", got.API, wantAPI)
	}
	if !got.Cluster.Multi() || !got.Cluster.TLS.Enabled() || !got.Local.DirSet {
		t.Errorf("Multi %v, TLS %v, local dir set %v", got.Cluster.Multi(), got.Cluster.TLS.Enabled(), got.Local.DirSet)
	}
}

func TestAgentInsecurePlaintext(t *testing.T) {
	const path = "testdata/agent/valid/insecure.hcl"
	base := abs(t, "testdata/agent/valid")
	got, err := parseAgentFile(t, path, fixedEnv(""))
	if err != nil {
		t.Fatalf("unexpected error:\n%v", err)
	}
	if !got.Cluster.Insecure.Enabled() || got.Cluster.Insecure.TokenFile != filepath.Join(base, "cluster-token") || got.Cluster.TLS.Enabled() {
		t.Errorf("cluster: %+v", got.Cluster)
	}
	if got.Limits != (Limits{MaxInstances: 500, MaxLaunchesInFlight: 4, RemediationRate: quantity.Rate{N: 3, Per: time.Hour}}) {
		t.Errorf("limits: %+v", got.Limits)
	}
	if len(got.Warnings) != 0 {
		t.Errorf("warnings on loopback: %v", got.Warnings)
	}
}
