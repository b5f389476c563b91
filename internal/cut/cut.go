// Package cut bounds texts that immutd keeps or sends (errors in raft,
// probe details, names from peers): one cut, at a character boundary, so
// that a bounded text is still valid UTF-8.
package cut

import "unicode/utf8"

// To cuts s to at most n bytes, at a character boundary, and appends mark
// when it cut (mark is not counted in n).
func To(s string, n int, mark string) string {
	if len(s) <= n {
		return s
	}
	if n < 0 {
		n = 0
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + mark
}
