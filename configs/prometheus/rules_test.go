// Package prometheus_test checks the Prometheus alerting rules shipped in
// this directory (immutd.rules.yml) with the real promtool: the rules must
// load, and their unit tests (immutd.rules_test.yml) must pass.
//
// promtool is found through the PROMTOOL environment variable or PATH.
// A missing promtool is a failure, not a skip: .ci/ensure-tools installs it
// (Debian package "prometheus"). Under go test -short (unit tests only)
// the tests that run promtool are skipped.
package prometheus_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const (
	rulesFile     = "immutd.rules.yml"
	rulesTestFile = "immutd.rules_test.yml"
)

// promtool returns the path of the promtool binary or fails the test; in
// -short mode it skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs promtool: skipped in -short mode (unit tests only)")
	}
	if p := os.Getenv("PROMTOOL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("PROMTOOL=%s: %v", p, err)
		}
		return p
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found in PATH and PROMTOOL is not set (run .ci/ensure-tools, or apt-get install prometheus): %v", err)
	}
	return p
}

// run runs promtool with args in dir and returns its combined output and
// whether it exited 0. It fails the test if promtool could not be run.
func run(t *testing.T, dir string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool(t), args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok || ctx.Err() != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
	}
	return out.String(), err == nil
}

func TestRulesCheck(t *testing.T) {
	out, ok := run(t, ".", "check", "rules", rulesFile)
	if !ok {
		t.Fatalf("promtool check rules %s failed:\n%s", rulesFile, out)
	}
	t.Logf("promtool check rules:\n%s", out)
}

func TestRulesUnitTests(t *testing.T) {
	out, ok := run(t, ".", "test", "rules", rulesTestFile)
	if !ok {
		t.Fatalf("promtool test rules %s failed:\n%s", rulesTestFile, out)
	}
	t.Logf("promtool test rules:\n%s", out)
}

// TestRulesUnitTestsCatchBreakage makes sure the unit tests are able to
// fail: with every `for:` duration cut to zero, the near-miss cases (an
// alert that must still be pending, or a condition that held for too short
// a time) have to fire and promtool has to report a failure.
func TestRulesUnitTestsCatchBreakage(t *testing.T) {
	rules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	forRE := regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`)
	if !forRE.Match(rules) {
		t.Fatalf("%s has no `for:` durations to break", rulesFile)
	}
	broken := forRE.ReplaceAll(rules, []byte("${1}0m"))

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, rulesFile), broken, 0o644); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rulesTestFile), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	out, ok := run(t, dir, "test", "rules", rulesTestFile)
	if ok {
		t.Fatalf("promtool test rules passed with every `for:` set to 0m; the near-miss tests do not test anything:\n%s", out)
	}
}

// TestEveryAlertTestedBothWays checks that each alert of the rules file has
// at least one test case where it fires (non-empty exp_alerts) and one
// where it must not (exp_alerts: []).
func TestEveryAlertTestedBothWays(t *testing.T) {
	rules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	alertRE := regexp.MustCompile(`(?m)^\s*-\s*alert:\s*(\S+)\s*$`)
	var alerts []string
	for _, m := range alertRE.FindAllSubmatch(rules, -1) {
		alerts = append(alerts, string(m[1]))
	}
	if len(alerts) == 0 {
		t.Fatalf("no alerts found in %s", rulesFile)
	}

	f, err := os.Open(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		nameRE  = regexp.MustCompile(`^\s*alertname:\s*(\S+)\s*$`)
		emptyRE = regexp.MustCompile(`^\s*exp_alerts:\s*\[\s*\]\s*$`)
		someRE  = regexp.MustCompile(`^\s*exp_alerts:\s*$`)
		fires   = map[string]bool{}
		quiet   = map[string]bool{}
		current string
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case nameRE.MatchString(line):
			current = nameRE.FindStringSubmatch(line)[1]
		case emptyRE.MatchString(line):
			quiet[current] = true
		case someRE.MatchString(line):
			fires[current] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("alert %s has no test case where it fires", a)
		}
		if !quiet[a] {
			t.Errorf("alert %s has no near-miss test case (exp_alerts: [])", a)
		}
	}
}
