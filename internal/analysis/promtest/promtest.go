// Package promtest owns starting a real Prometheus server for tests: a
// child process of the test binary on a free loopback port, with a fresh
// storage directory and a configuration that scrapes the given targets
// every second. It is for tests only (it imports testing).
//
// The prometheus binary comes from PATH (the Debian package prometheus
// installs /usr/bin/prometheus). A test that needs it fails, and says how
// to install it, when it is missing; go test -short skips such tests.
package promtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// ReadyTimeout bounds how long Start waits for Prometheus to be ready.
	// It is generous on purpose: it is a deadline for a condition, not a
	// delay, and a loaded machine must not fail the test.
	ReadyTimeout = 90 * time.Second
	// pollInterval is how often Start checks readiness.
	pollInterval = 50 * time.Millisecond
	// bindAttempts is how many free ports Start tries, should another
	// process take a port between choosing it and Prometheus binding it.
	bindAttempts = 5
	installHint  = "install it with: apt-get install -y prometheus"
)

// Start starts Prometheus scraping scrapeTargets every second and returns
// its address ("http://127.0.0.1:PORT") once it is ready. A target is
// "host:port" (scraped at http://host:port/metrics) or a URL such as an
// httptest server's URL ("http://127.0.0.1:PORT", path /metrics unless
// the URL has one). The process is killed, by its PID, when the test ends;
// its log is printed when the test failed. Under go test -short Start
// skips the test.
func Start(t testing.TB, scrapeTargets []string) (address string) {
	t.Helper()
	return startWith(t, func(path string) error { return writeConfig(path, scrapeTargets) })
}

// StartFileSD starts Prometheus scraping the targets a file_sd JSON file
// lists (as immutd's file traffic backend writes them), read again every
// second, as Start does.
func StartFileSD(t testing.TB, sdFile string) (address string) {
	t.Helper()
	return startWith(t, func(path string) error {
		c := config{Global: global{ScrapeInterval: "1s", ScrapeTimeout: "1s", EvaluationInterval: "1s"},
			ScrapeConfigs: []scrapeConfig{{JobName: "file_sd", Scheme: "http", MetricsPath: "/metrics",
				FileSDConfigs: []fileSDConfig{{Files: []string{sdFile}, RefreshInterval: "1s"}}}}}
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(path, append(b, '\n'), 0o644)
	})
}

func startWith(t testing.TB, write func(path string) error) (address string) {
	t.Helper()
	if testing.Short() {
		t.Skip("promtest: starts a real Prometheus; skipped under -short")
	}
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("promtest: no prometheus binary in PATH (%v); %s", err, installHint)
	}
	dir := t.TempDir()
	configFile := filepath.Join(dir, "prometheus.yml")
	if err := write(configFile); err != nil {
		t.Fatalf("promtest: %v", err)
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("promtest: %v", err)
		}
		addr, err := start(t, bin, configFile, filepath.Join(dir, "attempt-"+strconv.Itoa(attempt)), port)
		if err == nil {
			return addr
		}
		if !errors.Is(err, errPortTaken) || attempt == bindAttempts {
			t.Fatalf("promtest: %v", err)
		}
		t.Logf("promtest: %v; trying another port", err)
	}
}

// errPortTaken is the error of an attempt whose port another process took.
var errPortTaken = errors.New("port already in use")

// start runs one Prometheus in dir, listening on 127.0.0.1:port, and
// waits until it is ready or has exited. An error wraps errPortTaken when
// Prometheus could not bind the port.
func start(t testing.TB, bin, configFile, dir string, port int) (string, error) {
	dataDir := filepath.Join(dir, "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return "", err
	}
	logPath := filepath.Join(dir, "prometheus.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer logFile.Close() // the child has its own descriptor
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(bin,
		"--config.file="+configFile,
		"--storage.tsdb.path="+dataDir,
		"--web.listen-address="+listen,
		"--web.enable-lifecycle",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by PID; an exited process makes this a no-op error
		<-exited
		if t.Failed() {
			printLog(t, logPath)
		}
	})
	address := "http://" + listen
	err = waitReady(address, dataDir, exited)
	if err == nil {
		return address, nil
	}
	if isExited(exited) {
		err = fmt.Errorf("prometheus exited before it was ready (%v)", waitErr)
		if logHas(logPath, "address already in use") {
			err = fmt.Errorf("%s: %w", listen, errPortTaken)
		}
	}
	return "", err // the cleanup prints the log if the test fails
}

// waitReady polls address until the Prometheus started with dataDir
// answers there and is ready, the process exits, or ReadyTimeout passes.
func waitReady(address, dataDir string, exited <-chan struct{}) error {
	deadline := time.NewTimer(ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	// Each poll is bounded too, so that a process that holds the port
	// without answering cannot stall the loop.
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		if isExited(exited) {
			return errors.New("prometheus exited")
		}
		err := ready(hc, address, dataDir)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
		case <-deadline.C:
			return fmt.Errorf("prometheus not ready after %s: %w", ReadyTimeout, err)
		case <-tick.C:
		}
	}
}

// ready checks that address answers GET /-/ready with 200 and that it is
// the Prometheus started with dataDir, not another process that took the
// port.
func ready(hc *http.Client, address, dataDir string) error {
	if _, err := get(hc, address+"/-/ready"); err != nil {
		return err
	}
	body, err := get(hc, address+"/api/v1/status/flags")
	if err != nil {
		return err
	}
	var flags struct {
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(body, &flags); err != nil {
		return fmt.Errorf("GET /api/v1/status/flags: %w", err)
	}
	if got := flags.Data["storage.tsdb.path"]; got != dataDir {
		return fmt.Errorf("%s is another server (storage.tsdb.path %q)", address, got)
	}
	return nil
}

// get returns the body of a 200 answer to GET url.
func get(hc *http.Client, url string) ([]byte, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

func isExited(exited <-chan struct{}) bool {
	select {
	case <-exited:
		return true
	default:
		return false
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// Configuration. YAML is a superset of JSON, so the file is written with
// encoding/json and needs no quoting rules of its own.

type config struct {
	Global        global         `json:"global"`
	ScrapeConfigs []scrapeConfig `json:"scrape_configs"`
}

type global struct {
	ScrapeInterval     string `json:"scrape_interval"`
	ScrapeTimeout      string `json:"scrape_timeout"`
	EvaluationInterval string `json:"evaluation_interval"`
}

type scrapeConfig struct {
	JobName       string         `json:"job_name"`
	Scheme        string         `json:"scheme"`
	MetricsPath   string         `json:"metrics_path"`
	StaticConfigs []staticConfig `json:"static_configs,omitempty"`
	FileSDConfigs []fileSDConfig `json:"file_sd_configs,omitempty"`
}

type fileSDConfig struct {
	Files           []string `json:"files"`
	RefreshInterval string   `json:"refresh_interval"`
}

type staticConfig struct {
	Targets []string `json:"targets"`
}

func writeConfig(path string, targets []string) error {
	c := config{Global: global{ScrapeInterval: "1s", ScrapeTimeout: "1s", EvaluationInterval: "1s"}}
	for i, target := range targets {
		sc, err := scrapeTarget(target)
		if err != nil {
			return err
		}
		sc.JobName = "target" + strconv.Itoa(i)
		c.ScrapeConfigs = append(c.ScrapeConfigs, sc)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// scrapeTarget makes the scrape configuration of one target, a host:port
// or a URL.
func scrapeTarget(target string) (scrapeConfig, error) {
	sc := scrapeConfig{Scheme: "http", MetricsPath: "/metrics"}
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	u, err := url.Parse(target)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return sc, fmt.Errorf("scrape target %q: want host:port or an http(s) URL", target)
	}
	sc.Scheme = u.Scheme
	if u.Path != "" && u.Path != "/" {
		sc.MetricsPath = u.Path
	}
	sc.StaticConfigs = []staticConfig{{Targets: []string{u.Host}}}
	return sc, nil
}

func logHas(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), s)
}

func printLog(t testing.TB, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Logf("promtest: read the prometheus log: %v", err)
		return
	}
	t.Logf("promtest: prometheus log (%s):\n%s", path, b)
}
