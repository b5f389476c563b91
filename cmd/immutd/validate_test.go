package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fleetsDir makes a fleets directory with the given files and an image
// bundle directory "bundle" next to them.
func fleetsDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bundle"), 0o755); err != nil {
		t.Fatal(err)
	}
	files["bundle/manifest.json"] = `{"name": "app", "version": "1", "entrypoint": ["bin/app"]}`
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func localFleet(name string) string {
	return `fleet "` + name + `" {
  size     = 1
  provider = "local"
  image    = "bundle"

  health {
    tcp "port" {}
  }
}
`
}

const dockerFleet = `fleet "api" {
  size     = 2
  provider = "docker"
  image    = "registry.example.com/team/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

  health {
    http "ready" {}
  }
}
`

// withCheckBundle replaces the bundle check for the test.
func withCheckBundle(t *testing.T, f func(ctx context.Context, dir string) error) {
	old := checkBundle
	checkBundle = f
	t.Cleanup(func() { checkBundle = old })
}

func TestValidate(t *testing.T) {
	withCheckBundle(t, nil)
	one := fleetsDir(t, map[string]string{"web.hcl": localFleet("web")})
	two := fleetsDir(t, map[string]string{"web.hcl": localFleet("web"), "api.hcl": dockerFleet})
	empty := fleetsDir(t, map[string]string{})
	bad := fleetsDir(t, map[string]string{"web.hcl": localFleet("web") + "fleet \"x\" {\n  size = -1\n  bogus = 1\n}\n"})
	hostileName := "we\x1b[2J\r\u009b\u202e\xffb.hcl"
	hostile := fleetsDir(t, map[string]string{hostileName: "fleet {"})
	tests := []struct {
		name     string
		args     []string
		code     int
		out, err string
	}{
		{"one fleet", []string{"validate", one}, 0, one + ": 1 fleet is valid: web\n", ""},
		{"two fleets", []string{"validate", two}, 0, two + ": 2 fleets are valid: api, web\n", ""},
		{"no fleets", []string{"validate", empty}, 0, empty + ": 0 fleets are valid\n", ""},
		{"flags after the directory", []string{"validate", one, "-config="}, 0, one + ": 1 fleet is valid: web\n", ""},
		{"invalid", []string{"validate", bad}, 1, "", filepath.Join(bad, "web.hcl") + ":12:"},
		{"missing directory", []string{"validate", filepath.Join(empty, "absent")}, 1, "", "immutd validate: config: read fleets directory: open " + filepath.Join(empty, "absent") + ": no such file or directory\n"},
		{"hostile file name", []string{"validate", hostile}, 1, "", `we\x1b[2J\r\u009b\u202e\xffb.hcl:1:`},
	}
	for _, tt := range tests {
		code, out, errOut := runCLI(t, tt.args...)
		if code != tt.code || out != tt.out || !strings.Contains(errOut, tt.err) || tt.err == "" && errOut != "" {
			t.Errorf("%s: exit %d (want %d)\nstdout %q\nwant   %q\nstderr %q\nwant it to contain %q", tt.name, code, tt.code, out, tt.out, errOut, tt.err)
		}
		assertNoRawControls(t, tt.name, errOut, false)
	}
	// Every problem of the invalid file is reported, not just the first.
	if _, _, errOut := runCLI(t, "validate", bad); strings.Count(errOut, "\n") < 2 {
		t.Errorf("validate reports only one problem:\n%s", errOut)
	}
}

// TestValidateAgentFile: -config checks the agent file, prints its
// warnings without failing, and checks its fleets_dir.
func TestValidateAgentFile(t *testing.T) {
	withCheckBundle(t, nil)
	fleets := fleetsDir(t, map[string]string{"web.hcl": localFleet("web")})
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	quiet := write("quiet.hcl", "data_dir = \"data\"\nfleets_dir = \""+fleets+"\"\n")
	public := write("public.hcl", "data_dir = \"data\"\nfleets_dir = \""+fleets+"\"\nhttp_addr = \"0.0.0.0:7979\"\n")
	broken := write("broken.hcl", "data_dir = \"data\"\nbogus = 1\n")

	code, out, errOut := runCLI(t, "validate", "-config", quiet)
	if code != 0 || errOut != "" || out != quiet+": agent configuration is valid\n"+fleets+": 1 fleet is valid: web\n" {
		t.Errorf("quiet agent file: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "validate", "-config", public)
	if code != 0 || !strings.HasPrefix(errOut, "warning: "+public+":3:13: http_addr: the API on 0.0.0.0:7979 is reachable from other hosts over plain HTTP") ||
		strings.Count(errOut, "\n") != 1 || !strings.Contains(out, "1 fleet is valid") {
		t.Errorf("agent file with a warning: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "validate", "-config", broken, fleets)
	if code != 1 || out != "" || !strings.Contains(errOut, broken+":2:") {
		t.Errorf("broken agent file: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
}

// TestValidateChecksBundles: a local fleet's bundle is checked as the
// agent checks it, and a problem is reported at the fleet's block.
func TestValidateChecksBundles(t *testing.T) {
	dir := fleetsDir(t, map[string]string{"web.hcl": "\n" + localFleet("web") + localFleet("web2"), "api.hcl": dockerFleet})
	var checked []string
	withCheckBundle(t, func(_ context.Context, bundle string) error {
		checked = append(checked, bundle)
		return errors.New("manifest.json: entrypoint \"bin/app\x1b[2J\" is not in the bundle")
	})
	code, out, errOut := runCLI(t, "validate", dir)
	file := filepath.Join(dir, "web.hcl")
	want := file + `:2:1: fleet "web".image: manifest.json: entrypoint "bin/app\x1b[2J" is not in the bundle` + "\n" +
		file + `:11:1: fleet "web2".image: manifest.json: entrypoint "bin/app\x1b[2J" is not in the bundle` + "\n"
	if code != 1 || out != "" || errOut != want {
		t.Errorf("exit %d\nstdout %q\nstderr %q\nwant   %q", code, out, errOut, want)
	}
	bundle := filepath.Join(dir, "bundle")
	if len(checked) != 2 || checked[0] != bundle || checked[1] != bundle {
		t.Errorf("checked %q, want the local fleets' bundle %s twice (and not the docker fleet)", checked, bundle)
	}

	withCheckBundle(t, func(context.Context, string) error { return nil })
	if code, out, errOut := runCLI(t, "validate", dir); code != 0 || out != dir+": 3 fleets are valid: api, web, web2\n" {
		t.Errorf("good bundles: exit %d: %s%s", code, out, errOut)
	}
}

// TestValidateChecksBundlesLikeTheAgent runs the real bundle check.
func TestValidateChecksBundlesLikeTheAgent(t *testing.T) {
	dir := fleetsDir(t, map[string]string{"web.hcl": localFleet("web")})
	code, out, errOut := runCLI(t, "validate", dir)
	prefix := filepath.Join(dir, "web.hcl") + `:1:1: fleet "web".image: `
	if code != 1 || out != "" || !strings.HasPrefix(errOut, prefix) || !strings.Contains(errOut, "bin/app") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("bundle without its entrypoint: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	if err := os.Mkdir(filepath.Join(dir, "bundle", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bundle", "bin", "app"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCLI(t, "validate", dir); code != 0 || out != dir+": 1 fleet is valid: web\n" {
		t.Errorf("good bundle: exit %d: %s%s", code, out, errOut)
	}
}
