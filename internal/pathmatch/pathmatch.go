// Package pathmatch owns the glob patterns that fleet files use to name
// paths whose changes are not drift (drift { ignore_paths = [...] }).
//
// A pattern is a slash-separated path relative to an instance's root. '*',
// '?' and '[...]' match within one path segment (as path.Match), a "**"
// segment matches any number of segments, and a pattern that matches a
// directory also matches everything below it. A leading "/" or "./" and a
// trailing "/" are allowed and change nothing.
package pathmatch

import (
	"fmt"
	"path"
	"strings"
)

// Set is a compiled list of patterns. The zero value and nil match nothing.
type Set struct {
	patterns [][]string
}

// Compile checks and splits patterns. It rejects patterns that match
// nothing (empty, "/", "."), that have empty, "." or ".." segments, or
// that path.Match cannot parse.
func Compile(patterns []string) (*Set, error) {
	s := &Set{}
	for _, raw := range patterns {
		pat := strings.TrimPrefix(strings.TrimPrefix(raw, "./"), "/")
		pat = strings.TrimSuffix(pat, "/")
		if pat == "" || pat == "." {
			return nil, fmt.Errorf("ignore pattern %q matches nothing; use \"**\" to ignore everything", raw)
		}
		segs := strings.Split(pat, "/")
		for _, seg := range segs {
			if seg == "" || seg == "." || seg == ".." {
				return nil, fmt.Errorf("ignore pattern %q: empty, \".\" and \"..\" segments are not allowed", raw)
			}
			if seg == "**" {
				continue
			}
			if _, err := path.Match(seg, ""); err != nil {
				return nil, fmt.Errorf("ignore pattern %q: %w", raw, err)
			}
		}
		s.patterns = append(s.patterns, segs)
	}
	return s, nil
}

// Match reports whether rel (a slash path relative to the root, without
// a leading "/") or one of its parent directories matches a pattern.
func (s *Set) Match(rel string) bool {
	if s == nil || len(s.patterns) == 0 {
		return false
	}
	segs := strings.Split(rel, "/")
	for n := 1; n <= len(segs); n++ {
		for _, pat := range s.patterns {
			if matchSegments(pat, segs[:n]) {
				return true
			}
		}
	}
	return false
}

// matchSegments matches path segments against pattern segments, where
// "**" stands for any number of segments. It backtracks only to the last
// "**", which is enough because "**" matches any sequence.
func matchSegments(pat, name []string) bool {
	pi, ni := 0, 0
	star, starName := -1, 0
	for ni < len(name) {
		switch {
		case pi < len(pat) && pat[pi] == "**":
			star, starName = pi, ni
			pi++
		case pi < len(pat) && segmentMatch(pat[pi], name[ni]):
			pi++
			ni++
		case star >= 0:
			starName++
			pi, ni = star+1, starName
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == "**" {
		pi++
	}
	return pi == len(pat)
}

func segmentMatch(pat, name string) bool {
	ok, err := path.Match(pat, name)
	return err == nil && ok
}
