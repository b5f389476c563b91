package pathmatch

import "testing"

func TestIgnorePatterns(t *testing.T) {
	cases := []struct {
		patterns []string
		path     string
		want     bool
	}{
		{[]string{"logs"}, "logs", true},
		{[]string{"logs"}, "logs/app.log", true},
		{[]string{"logs"}, "logs/a/b/c", true},
		{[]string{"logs"}, "mylogs", false},
		{[]string{"logs"}, "x/logs", false},
		{[]string{"/logs/"}, "logs/app.log", true},
		{[]string{"./logs"}, "logs/app.log", true},
		{[]string{"*.log"}, "app.log", true},
		{[]string{"*.log"}, "x/app.log", false},
		{[]string{"**/*.log"}, "app.log", true},
		{[]string{"**/*.log"}, "x/y/app.log", true},
		{[]string{"**/*.log"}, "x/y/app.logx", false},
		{[]string{"cache/**"}, "cache", true},
		{[]string{"cache/**"}, "cache/a/b", true},
		{[]string{"cache/**"}, "cached/a", false},
		{[]string{"a/**/z"}, "a/z", true},
		{[]string{"a/**/z"}, "a/b/c/z", true},
		{[]string{"a/**/z"}, "a/b/c/z/deeper", true},
		{[]string{"a/**/z"}, "a/b/c/y", false},
		{[]string{"a/**/b/**/c"}, "a/x/b/y/b/z/c", true},
		{[]string{"a/**/b/**/c"}, "a/x/c/b", false},
		{[]string{"run/?.sock"}, "run/a.sock", true},
		{[]string{"run/?.sock"}, "run/ab.sock", false},
		{[]string{"data/[0-9]*"}, "data/1.db", true},
		{[]string{"data/[0-9]*"}, "data/x.db", false},
		{[]string{"**"}, "anything/at/all", true},
		{[]string{"x", "y/*"}, "y/z", true},
		{nil, "anything", false},
	}
	for _, tc := range cases {
		s, err := Compile(tc.patterns)
		if err != nil {
			t.Fatalf("%q: %v", tc.patterns, err)
		}
		if got := s.Match(tc.path); got != tc.want {
			t.Errorf("patterns %q, path %q: match = %v, want %v", tc.patterns, tc.path, got, tc.want)
		}
	}
}

func TestIgnorePatternErrors(t *testing.T) {
	for _, p := range []string{"", "/", ".", "a//b", "a/../b", "[unclosed"} {
		if _, err := Compile([]string{p}); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
}

func TestNilSetMatchesNothing(t *testing.T) {
	var s *Set
	if s.Match("a") {
		t.Fatal("nil set matched")
	}
}
