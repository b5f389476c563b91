package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

// hostile are strings that would act on a terminal if printed raw.
var hostile = []string{"\x1b[2J", "\r", "\n", "\t", "\u009b", "\u202e", "\u2066", "\x7f", "\x07", "\xff\xfe"}

// evil returns s with every hostile string in it.
func evil(s string) string { return s + "<" + strings.Join(hostile, "|") + ">" }

// assertNoRawControls fails when out holds a control character other
// than a newline, a C1 or bidi control, or invalid UTF-8. Tabs are
// refused too unless allowTabs: the tabwriter replaces the CLI's own.
func assertNoRawControls(t *testing.T, what, out string, allowTabs bool) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("%s: invalid UTF-8 in the output:\n%q", what, out)
	}
	for _, r := range out {
		if r == '\n' || r == '\t' && allowTabs {
			continue
		}
		if r < 0x20 || r == 0x7f || isC1(r) || isBidi(r) {
			t.Errorf("%s: raw %U in the output:\n%q", what, r, out)
			return
		}
	}
}

func TestClean(t *testing.T) {
	tests := []struct{ in, want string }{
		{"web-1", "web-1"},
		{"", ""},
		{"ünïcödé ✓ \ufffd", "ünïcödé ✓ \ufffd"},
		{"a\x1b[2Jb", `a\x1b[2Jb`},
		{"line\r\nnext\ttab", `line\r\nnext\ttab`},
		{"\x00\x07\x7f", `\x00\x07\x7f`},
		{"csi\u009b31m", `csi\u009b31m`},
		{"\u0080\u009f\u00a0", `\u0080\u009f` + "\u00a0"},
		{"evil\u202egnp.exe", `evil\u202egnp.exe`},
		{"\u202a\u2066\u2069\u2065\u206a", `\u202a\u2066\u2069` + "\u2065\u206a"},
		{"bad\xff\xfeutf8\xe2\x82", `bad\xff\xfeutf8\xe2\x82`},
		{`back\slash`, `back\slash`},
	}
	for _, tt := range tests {
		if got := clean(tt.in); got != tt.want {
			t.Errorf("clean(%q) = %q, want %q", tt.in, got, tt.want)
		}
		assertNoRawControls(t, "clean", clean(tt.in), false)
	}
}

// TestEscaperIsABackstop: what reaches the CLI's writers raw is escaped,
// except the newlines and tabs of the CLI's own layout, and a character
// split across two writes is not mistaken for invalid UTF-8.
func TestEscaperIsABackstop(t *testing.T) {
	var b bytes.Buffer
	e := newEscaper(&b)
	for _, s := range []string{"a\tb\n", "\x1b]0;title\x07", "\u009b\u202e", "split \xe2\x9c", "\x93 done\n", "\xff", "tail \xe2"} {
		if n, err := e.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	e.Flush()
	want := "a\tb\n" + `\x1b]0;title\x07\u009b\u202e` + "split ✓ done\n" + `\xff` + `tail \xe2`
	if b.String() != want {
		t.Errorf("escaper wrote %q, want %q", b.String(), want)
	}
}

// TestWriteJSONEscapesControls: JSON output shows C1, bidi and DEL as
// \u escapes and still decodes to the same strings.
func TestWriteJSONEscapesControls(t *testing.T) {
	in := map[string]string{"name": "web\x1b[2J\r\n\u009b\u202e\u2069\x7f", "plain": "ok <&>"}
	var b bytes.Buffer
	if err := writeJSON(&b, in, true); err != nil {
		t.Fatal(err)
	}
	assertNoRawControls(t, "writeJSON", b.String(), false)
	for _, want := range []string{`\u001b[2J`, `\r\n`, `\u009b`, `\u202e`, `\u2069`, `\u007f`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("JSON lacks %s: %s", want, b.String())
		}
	}
	var out map[string]string
	if err := json.Unmarshal(b.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out["name"] != in["name"] || out["plain"] != in["plain"] {
		t.Errorf("decoded %q, want %q", out, in)
	}
}

// TestLongEvidenceIsCutCleanly: an event's evidence is cut to fit its
// line after it is cleaned, never inside a character.
func TestLongEvidenceIsCutCleanly(t *testing.T) {
	var b bytes.Buffer
	renderEvents(&b, []state.Event{{Action: "terminated", Evidence: []string{strings.Repeat("✓", 100), "\x1b[2J"}}})
	line := strings.TrimSuffix(b.String(), "\n")
	if !utf8.ValidString(line) || !strings.HasSuffix(line, "✓...") || strings.Contains(line, "\x1b") {
		t.Errorf("evidence cut badly: %q", line)
	}
	if ev := line[strings.Index(line, "✓"):]; len(ev) > maxEvidence {
		t.Errorf("evidence is %d bytes, more than %d: %q", len(ev), maxEvidence, ev)
	}
}

// TestBlockedFleetShowsItsLastLaunchError: the error of the last failed
// launch is shown in full (escaped), not only its reason.
func TestBlockedFleetShowsItsLastLaunchError(t *testing.T) {
	var b bytes.Buffer
	err := "exec: \"bin/app\": no such file or directory " + strings.Repeat("x", 200) + "\x1b[2J"
	renderFleets(&b, []api.Fleet{{Name: "web", LaunchFailures: 3, LastLaunchError: err,
		Blocked: []api.Block{{Cause: "launch_backoff", Detail: "3 consecutive instances failed"}}}})
	out := b.String()
	if !strings.Contains(out, "web last launch error: exec: \"bin/app\": no such file or directory "+strings.Repeat("x", 200)) || strings.Contains(out, "\x1b") {
		t.Fatalf("status:\n%s", out)
	}
}
