package cut

import "testing"

func TestTo(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		mark string
		want string
	}{
		{"abc", 3, "…", "abc"},
		{"abcd", 3, "", "abc"},
		{"ab€cd", 3, "…", "ab…"}, // € is 3 bytes: not split
		{"ab€cd", 5, "...", "ab€..."},
		{"€", 0, "", ""},
	} {
		if got := To(c.s, c.n, c.mark); got != c.want {
			t.Errorf("To(%q, %d, %q) = %q, want %q", c.s, c.n, c.mark, got, c.want)
		}
	}
}
