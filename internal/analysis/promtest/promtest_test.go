package promtest

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
)

func TestScrapeTarget(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   scrapeConfig
		err    bool
	}{
		{"127.0.0.1:9100", scrapeConfig{Scheme: "http", MetricsPath: "/metrics", StaticConfigs: []staticConfig{{Targets: []string{"127.0.0.1:9100"}}}}, false},
		{"http://127.0.0.1:8080", scrapeConfig{Scheme: "http", MetricsPath: "/metrics", StaticConfigs: []staticConfig{{Targets: []string{"127.0.0.1:8080"}}}}, false},
		{"https://127.0.0.1:8443/custom/metrics", scrapeConfig{Scheme: "https", MetricsPath: "/custom/metrics", StaticConfigs: []staticConfig{{Targets: []string{"127.0.0.1:8443"}}}}, false},
		{"ftp://127.0.0.1:21", scrapeConfig{}, true},
		{"", scrapeConfig{}, true},
	} {
		got, err := scrapeTarget(tc.target)
		if (err != nil) != tc.err || !tc.err && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("scrapeTarget(%q) = %+v, %v; want %+v, error %v", tc.target, got, err, tc.want, tc.err)
		}
	}
}

func TestWriteConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := writeConfig(path, []string{"127.0.0.1:1", "http://127.0.0.1:2/m"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c config
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Global.ScrapeInterval != "1s" || c.Global.EvaluationInterval != "1s" || len(c.ScrapeConfigs) != 2 ||
		c.ScrapeConfigs[0].JobName != "target0" || c.ScrapeConfigs[1].MetricsPath != "/m" {
		t.Fatalf("config = %s", b)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(promtool, "check", "config", path).CombinedOutput(); err != nil {
			t.Fatalf("promtool check config: %v\n%s", err, out)
		}
	}
}

// TestStartPortTaken checks that a port another process holds is
// recognised as such, which is what makes Start try another port.
func TestStartPortTaken(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Prometheus; skipped under -short")
	}
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("no prometheus binary in PATH (%v); %s", err, installHint)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	configFile := filepath.Join(dir, "prometheus.yml")
	if err := writeConfig(configFile, nil); err != nil {
		t.Fatal(err)
	}
	_, err = start(t, bin, configFile, filepath.Join(dir, "run"), l.Addr().(*net.TCPAddr).Port)
	if !errors.Is(err, errPortTaken) {
		t.Fatalf("start on a taken port: %v, want errPortTaken", err)
	}
}

func TestStart(t *testing.T) {
	address := Start(t, nil)
	resp, err := http.Get(address + "/-/healthy")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /-/healthy: %s", resp.Status)
	}
}

// TestReadyChecksIdentity checks that a server answering on the port is
// taken for ours only when its storage path is ours.
func TestReadyChecksIdentity(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/-/ready":
			_, _ = w.Write([]byte("Prometheus Server is Ready.\n"))
		case "/api/v1/status/flags":
			_, _ = w.Write([]byte(`{"status":"success","data":{"storage.tsdb.path":"/theirs"}}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	hc := srv.Client()
	if err := ready(hc, srv.URL, "/theirs"); err != nil {
		t.Fatalf("ready with the right path: %v", err)
	}
	want := srv.URL + ` is another server (storage.tsdb.path "/theirs")`
	if err := ready(hc, srv.URL, "/ours"); err == nil || err.Error() != want {
		t.Fatalf("ready with another path: %v, want %s", err, want)
	}
}
