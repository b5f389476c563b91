package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// What the CLI prints comes largely from elsewhere: fleet names, instance
// ids, probe evidence and error messages from an agent, paths and
// diagnostics from files. Printed raw, an escape sequence in any of them
// could clear the screen, rewrite earlier lines, retitle the terminal or
// reorder text (bidi controls), so every such value goes through clean
// before it is formatted, and the writers run gives the commands escape
// whatever slips through.

// clean returns s with every control character shown as a visible
// escape: C0 controls (ESC, CR, LF and TAB included, so that a value
// stays on its line and in its column), DEL, C1 controls, the Unicode
// bidi controls, and each byte of invalid UTF-8.
func clean(s string) string { return escape(s, false) }

// escape is clean; with keepLayout it leaves newlines and tabs alone, for
// text the CLI formatted itself.
func escape(s string, keepLayout bool) string {
	if !needsEscape(s, keepLayout) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case keepLayout && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case isC1(r) || isBidi(r):
			// \u, not \x: these are characters, not bytes of invalid UTF-8.
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsEscape(s string, keepLayout bool) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || unsafeRune(r) && !(keepLayout && (r == '\n' || r == '\t')) {
			return true
		}
		i += size
	}
	return false
}

// unsafeRune reports the characters escape shows as escapes.
func unsafeRune(r rune) bool { return r < 0x20 || r == 0x7f || isC1(r) || isBidi(r) }

// isC1 reports the C1 controls; U+009B alone is a CSI, as ESC [ is.
func isC1(r rune) bool { return r >= 0x80 && r <= 0x9f }

// isBidi reports the bidi embedding, override and isolate controls,
// which make a terminal show text in another order than it is.
func isBidi(r rune) bool { return r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 }

// escaper is the backstop around the CLI's stdout and stderr: it
// escapes any control character in what is written to it except the
// newlines and tabs of the CLI's own layout.
type escaper struct {
	w io.Writer
	// pending is the start of a UTF-8 sequence that a writer split across
	// two writes; it is held back so that it is not taken for invalid
	// UTF-8.
	pending []byte
}

func newEscaper(w io.Writer) *escaper { return &escaper{w: w} }

func (e *escaper) Write(p []byte) (int, error) {
	b := append(e.pending, p...)
	e.pending = nil
	if start := lastRuneStart(b); start >= 0 && !utf8.FullRune(b[start:]) {
		e.pending = append([]byte(nil), b[start:]...)
		b = b[:start]
	}
	if _, err := io.WriteString(e.w, escape(string(b), true)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what is held back, escaped as the invalid UTF-8 it is
// when nothing completed it.
func (e *escaper) Flush() {
	if len(e.pending) > 0 {
		_, _ = io.WriteString(e.w, escape(string(e.pending), true))
		e.pending = nil
	}
}

// lastRuneStart returns the index of the byte that starts the last
// (possibly incomplete) UTF-8 sequence of b, or -1.
func lastRuneStart(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			return i
		}
	}
	return -1
}

// writeJSON writes v as one JSON document and a newline. encoding/json
// escapes C0 controls and replaces invalid UTF-8, but leaves DEL, the C1
// controls and the bidi controls raw inside strings; they are \u-escaped
// here, so that the output shows them as escapes and still decodes to
// the same strings.
func writeJSON(w io.Writer, v any, indent bool) error {
	var b []byte
	var err error
	if indent {
		b, err = json.MarshalIndent(v, "", "  ")
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		return err
	}
	_, err = w.Write(append(escapeJSON(b), '\n'))
	return err
}

// escapeJSON \u-escapes DEL, C1 and bidi controls in JSON text. Outside
// strings JSON has only ASCII, so any such character is inside a string.
func escapeJSON(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == 0x7f || isC1(r) || isBidi(r) {
			out = fmt.Appendf(out, `\u%04x`, r)
		} else {
			out = append(out, b[i:i+size]...)
		}
		i += size
	}
	return out
}
