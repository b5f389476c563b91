package config

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/immutd/immutd/internal/cut"
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
	if d.Pos.File != "" {
		b.WriteString(": ")
	}
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

// Bounds on a report, so that what is logged, stored in events and shown
// in status never grows with the input: at most maxDiagsPerFile problems
// per file and maxDiags in all, each message at most maxDiagLen bytes.
const (
	maxDiagsPerFile = 20
	maxDiags        = 50
	maxDiagLen      = 400
)

// sorted returns the diagnostics ordered by file and position (problems
// at the same position keep the order they were found in), capped: the
// problems beyond the bounds are counted in a last line per file, and in
// all.
func (ds Diagnostics) sorted() Diagnostics {
	all := slices.Clone(ds)
	slices.SortStableFunc(all, func(a, b Diagnostic) int {
		return cmp.Or(
			cmp.Compare(a.Pos.File, b.Pos.File),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Column, b.Pos.Column),
		)
	})
	var out Diagnostics
	more := 0 // problems left out of out, beyond maxDiags
	for i := 0; i < len(all); {
		j := i
		for j < len(all) && all[j].Pos.File == all[i].Pos.File {
			j++
		}
		kept := min(j-i, maxDiagsPerFile, max(maxDiags-len(out), 0))
		for _, d := range all[i : i+kept] {
			d.Message = truncate(d.Message, maxDiagLen)
			out = append(out, d)
		}
		switch {
		case kept == 0:
			more += j - i
		case j-i > kept:
			out = append(out, Diagnostic{Pos: all[i+kept].Pos, Message: fmt.Sprintf("... and %d more errors in this file, from here on", j-i-kept)})
		}
		i = j
	}
	if more > 0 {
		out = append(out, Diagnostic{Message: fmt.Sprintf("... and %d more errors in other files", more)})
	}
	return out
}

// truncate cuts s to at most max bytes at a rune boundary, marking the cut.
func truncate(s string, max int) string { return cut.To(s, max, "... (cut)") }

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
