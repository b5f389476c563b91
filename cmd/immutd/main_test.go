package main

import (
	"bytes"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// runCLI runs the command line and returns its exit status, stdout and
// stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errw bytes.Buffer
	code := run(args, &out, &errw)
	return code, out.String(), errw.String()
}

// forbidAgent points the CLI's defaults at an agent that fails the test
// if any request reaches it.
func forbidAgent(t *testing.T) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("%s %s reached the agent", r.Method, r.URL)
		http.Error(w, "forbidden by the test", http.StatusTeapot)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("IMMUTD_ADDR", srv.URL)
	t.Setenv("IMMUTD_TOKEN_FILE", "")
	t.Setenv("IMMUTD_CA_FILE", "")
}

// synopses are every command's synopsis line, as its help prints it.
var synopses = map[string]string{
	"agent":           "usage: immutd agent [flags]",
	"validate":        "usage: immutd validate [DIR] [flags]",
	"status":          "usage: immutd status [flags]",
	"events":          "usage: immutd events [flags]",
	"fleet drain":     "usage: immutd fleet drain NAME [flags]",
	"fleet resolve":   "usage: immutd fleet resolve NAME [flags]",
	"fleet retry":     "usage: immutd fleet retry NAME [flags]",
	"cluster members": "usage: immutd cluster members [flags]",
	"cluster join":    "usage: immutd cluster join ADDR [flags]",
	"cluster leave":   "usage: immutd cluster leave [flags]",
	"cluster remove":  "usage: immutd cluster remove NODE [flags]",
	"tls init":        "usage: immutd tls init -nodes NAME,... [flags]",
	"version":         "usage: immutd version",
	"plan":            "usage: immutd plan [FLEET] [flags]",
	"rollout status":  "usage: immutd rollout status [FLEET] [flags]",
	"rollout pause":   "usage: immutd rollout pause FLEET [flags]",
	"rollout resume":  "usage: immutd rollout resume FLEET [flags]",
	"rollout abort":   "usage: immutd rollout abort FLEET [flags]",
	"rollout promote": "usage: immutd rollout promote FLEET [flags]",
	"rollout confirm": "usage: immutd rollout confirm FLEET [flags]",
	"rollout revert":  "usage: immutd rollout revert FLEET [VERSION] [flags]",
	"explain":         "usage: immutd explain INSTANCE [flags]",
	"logs":            "usage: immutd logs INSTANCE [flags]",
	"completion":      "usage: immutd completion bash|zsh",
	"pause":           "usage: immutd pause REASON... [flags]",
	"unpause":         "usage: immutd unpause ID | -all [flags]",
}

func TestEveryCommandHasASynopsis(t *testing.T) {
	if len(commands) != len(synopses) {
		t.Errorf("%d commands, %d synopses in the test", len(commands), len(synopses))
	}
	for _, c := range commands {
		fs, _ := c.flags()
		if got := c.synopsis(fs); got != synopses[c.name] {
			t.Errorf("%s: synopsis %q, want %q", c.name, got, synopses[c.name])
		}
		if c.summary == "" || c.about == "" {
			t.Errorf("%s: no summary or description", c.name)
		}
	}
}

// TestHelpNeverReachesAnAgent: -h, -help and --help anywhere among a
// command's arguments, and `immutd help COMMAND`, print the command's
// usage to stdout and exit 0 without a request.
func TestHelpNeverReachesAnAgent(t *testing.T) {
	forbidAgent(t)
	for _, c := range commands {
		name := strings.Fields(c.name)
		with := func(extra ...string) []string { return append(append([]string(nil), name...), extra...) }
		lines := [][]string{
			with("-h"),
			with("-help"),
			with("--help"),
			append([]string{"help"}, name...),
			with("web", "-h"),
			with("-addr", "127.0.0.1:1", "web", "--help"),
			with("--", "-h"),
			with("-h", "a", "b", "c"),
		}
		for _, args := range lines {
			code, out, errOut := runCLI(t, args...)
			if code != 0 || errOut != "" {
				t.Errorf("%q: exit %d, stderr %q", args, code, errOut)
			}
			if !strings.HasPrefix(out, synopses[c.name]+"\n\n"+c.about+"\n") {
				t.Errorf("%q: stdout does not start with the synopsis and description:\n%s", args, out)
			}
			if fs, _ := c.flags(); fs.Lookup("addr") != nil && !strings.Contains(out, "\nflags:\n  -addr string\n") {
				t.Errorf("%q: stdout does not list the flags:\n%s", args, out)
			}
		}
	}
}

func TestUsage(t *testing.T) {
	forbidAgent(t)
	tests := []struct {
		args         []string
		code         int
		out, err     string // substrings expected in stdout and stderr
		noOut, noErr bool
	}{
		{args: nil, code: 2, err: "usage: immutd COMMAND", noOut: true},
		{args: []string{"help"}, code: 0, out: "usage: immutd COMMAND", noErr: true},
		{args: []string{"-h"}, code: 0, out: "usage: immutd COMMAND", noErr: true},
		{args: []string{"help", "-h"}, code: 0, out: "usage: immutd COMMAND", noErr: true},
		{args: []string{"--help"}, code: 0, out: "usage: immutd COMMAND", noErr: true},
		{args: []string{"bogus"}, code: 2, err: `immutd: unknown command "bogus"`, noOut: true},
		{args: []string{"help", "bogus"}, code: 2, err: `immutd help: unknown command "bogus"`, noOut: true},
		{args: []string{"help", "fleet", "drain", "x"}, code: 2, err: `unknown command "fleet drain x"`, noOut: true},
		{args: []string{"fleet"}, code: 2, err: "immutd fleet: missing subcommand\nusage: immutd fleet SUBCOMMAND", noOut: true},
		{args: []string{"fleet", "-h"}, code: 0, out: "  fleet drain NAME ", noErr: true},
		{args: []string{"help", "cluster"}, code: 0, out: "  cluster remove NODE ", noErr: true},
		{args: []string{"cluster", "bogus"}, code: 2, err: `immutd cluster: unknown subcommand "bogus"`, noOut: true},
		{args: []string{"cluster", "\x1b[2J\u202e"}, code: 2, err: `unknown subcommand "\x1b[2J\u202e"`, noOut: true},
		{args: []string{"--version"}, code: 0, out: "immutd ", noErr: true},
		{args: []string{"version"}, code: 0, out: "immutd ", noErr: true},
	}
	for _, tt := range tests {
		code, out, errOut := runCLI(t, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) ||
			tt.noOut && out != "" || tt.noErr && errOut != "" {
			t.Errorf("%q: exit %d (want %d)\nstdout:\n%s\nstderr:\n%s", tt.args, code, tt.code, out, errOut)
		}
	}
}

// TestTopLevelUsageListsEveryCommand keeps the usage text accurate.
func TestTopLevelUsageListsEveryCommand(t *testing.T) {
	_, out, _ := runCLI(t, "help")
	for _, c := range commands {
		if !strings.Contains(out, "\n  "+strings.TrimSpace(c.name+" "+c.args)+"  ") {
			t.Errorf("usage does not list %q:\n%s", c.name, out)
		}
	}
	for _, want := range []string{"-addr", "IMMUTD_ADDR", "127.0.0.1:7979", "-token-file", "IMMUTD_TOKEN_FILE", "-ca-file", "IMMUTD_CA_FILE", "immutd help COMMAND"} {
		if !strings.Contains(out, want) {
			t.Errorf("usage does not mention %s", want)
		}
	}
}

// TestUsageErrors: a wrong call prints a one-line reason and the
// synopsis to stderr, exits 2, and never reaches an agent; in
// particular no argument starting with "-" is taken for a name.
func TestUsageErrors(t *testing.T) {
	forbidAgent(t)
	tests := []struct {
		args   []string
		reason string
	}{
		{[]string{"fleet", "drain"}, "immutd fleet drain: missing NAME"},
		{[]string{"fleet", "drain", "-addr", "127.0.0.1:1"}, "immutd fleet drain: missing NAME"},
		{[]string{"fleet", "drain", "a", "b"}, "immutd fleet drain: too many arguments (2); expected NAME"},
		{[]string{"fleet", "drain", "-x"}, "immutd fleet drain: flag provided but not defined: -x"},
		{[]string{"fleet", "drain", "--x", "web"}, "immutd fleet drain: flag provided but not defined: -x"},
		{[]string{"fleet", "drain", "--", "-x"}, `immutd fleet drain: unknown flag "-x" (no argument may start with "-")`},
		{[]string{"fleet", "drain", "-"}, `immutd fleet drain: unknown flag "-" (no argument may start with "-")`},
		{[]string{"fleet", "resolve", "--", "--help=1"}, `immutd fleet resolve: unknown flag "--help=1" (no argument may start with "-")`},
		{[]string{"fleet", "resolve"}, "immutd fleet resolve: missing NAME"},
		{[]string{"cluster", "join"}, "immutd cluster join: missing ADDR"},
		{[]string{"cluster", "join", "--", "--bootstrap"}, `immutd cluster join: unknown flag "--bootstrap" (no argument may start with "-")`},
		{[]string{"cluster", "remove"}, "immutd cluster remove: missing NODE"},
		{[]string{"cluster", "leave", "now"}, `immutd cluster leave: unexpected argument "now"`},
		{[]string{"cluster", "members", "-json=maybe"}, `immutd cluster members: invalid boolean value "maybe" for -json: parse error`},
		{[]string{"status", "web"}, `immutd status: unexpected argument "web"`},
		{[]string{"status", "-fleet"}, "immutd status: flag needs an argument: -fleet"},
		{[]string{"events", "-n", "many"}, `immutd events: invalid value "many" for flag -n: parse error`},
		{[]string{"validate", "a", "b"}, "immutd validate: too many arguments (2); expected [DIR]"},
		{[]string{"validate"}, "immutd validate: give a fleets directory or -config FILE"},
		{[]string{"tls", "init"}, "immutd tls init: -nodes is required"},
		{[]string{"version", "x"}, `immutd version: unexpected argument "x"`},
		{[]string{"agent", "x"}, `immutd agent: unexpected argument "x"`},
	}
	for _, tt := range tests {
		code, out, errOut := runCLI(t, tt.args...)
		c, _ := lookup(tt.args)
		want := tt.reason + "\n" + synopses[c.name] + "\n"
		if code != 2 || out != "" || !strings.HasPrefix(errOut, want) {
			t.Errorf("%q: exit %d, stdout %q\nstderr:\n%s\nwant it to start with:\n%s", tt.args, code, out, errOut, want)
		}
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args []string
		pos  []string
		addr string
		json bool
	}{
		{[]string{"web"}, []string{"web"}, "default", false},
		{[]string{"web", "-addr", "a:1"}, []string{"web"}, "a:1", false},
		{[]string{"-addr", "a:1", "web"}, []string{"web"}, "a:1", false},
		{[]string{"-addr=a:1", "web", "-json"}, []string{"web"}, "a:1", true},
		{[]string{"--addr", "a:1", "web", "--json"}, []string{"web"}, "a:1", true},
		{[]string{"-json", "web", "-addr", "-weird"}, []string{"web"}, "-weird", true},
		{[]string{"-json=false", "web"}, []string{"web"}, "default", false},
		{[]string{"-addr", "a:1", "--", "web", "x"}, []string{"web", "x"}, "a:1", false},
		{[]string{"-addr", "--", "web"}, []string{"web"}, "--", false},
		{nil, nil, "default", false},
	}
	for _, tt := range tests {
		fs := newTestFlagSet()
		addr, asJSON := fs.String("addr", "default", ""), fs.Bool("json", false, "")
		pos, err := parseArgs(fs, tt.args)
		if err != nil || strings.Join(pos, "|") != strings.Join(tt.pos, "|") || *addr != tt.addr || *asJSON != tt.json {
			t.Errorf("%q: positional %q, -addr %q, -json %v, error %v", tt.args, pos, *addr, *asJSON, err)
		}
	}
}

func newTestFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}
