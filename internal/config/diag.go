package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Diagnostic is one problem found in a configuration file.
type Diagnostic struct {
	// Pos is where the problem is: the offending attribute's value, or the
	// header of the block that lacks a required attribute.
	Pos Pos `json:"pos"`
	// Field is the path of the offending setting, such as
	// `fleet "web".health.http "ready".timeout`. Empty for syntax errors.
	Field string `json:"field,omitempty"`
	// Message says what is wrong and what is expected.
	Message string `json:"message"`
}

// String formats the diagnostic as FILE:LINE:COLUMN: FIELD: MESSAGE.
func (d Diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.Pos.File)
	if d.Pos.Line > 0 {
		b.WriteString(":" + strconv.Itoa(d.Pos.Line) + ":" + strconv.Itoa(d.Pos.Column))
	}
	b.WriteString(": ")
	if d.Field != "" {
		b.WriteString(d.Field + ": ")
	}
	b.WriteString(d.Message)
	return b.String()
}

// Diagnostics is every problem found in a configuration file or fleets
// directory. It is the error LoadAgent, LoadFleets and Watcher updates
// carry for invalid content; I/O failures are plain errors instead.
type Diagnostics []Diagnostic

// Error prints one line per problem.
func (ds Diagnostics) Error() string {
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// sorted returns the diagnostics ordered by file and position; problems
// at the same position keep the order they were found in.
func (ds Diagnostics) sorted() Diagnostics {
	out := slices.Clone(ds)
	slices.SortStableFunc(out, func(a, b Diagnostic) int {
		return cmp.Or(
			cmp.Compare(a.Pos.File, b.Pos.File),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Column, b.Pos.Column),
		)
	})
	return out
}

func rangePos(r hcl.Range) Pos {
	return Pos{File: r.Filename, Line: r.Start.Line, Column: r.Start.Column}
}

// hclMessage turns a diagnostic of the HCL parser or evaluator into one line.
func hclMessage(h *hcl.Diagnostic) string {
	msg := lowerFirst(strings.TrimSpace(h.Summary))
	detail := strings.Join(strings.Fields(h.Detail), " ")
	if detail != "" {
		msg += "; " + lowerFirst(detail)
	}
	return strings.TrimSuffix(msg, ".")
}

// lowerFirst lowercases the first letter of a sentence, but not of an
// acronym such as "JSON".
func lowerFirst(s string) string {
	if len(s) < 2 || s[0] < 'A' || s[0] > 'Z' || (s[1] >= 'A' && s[1] <= 'Z') {
		return s
	}
	return string(s[0]+('a'-'A')) + s[1:]
}
