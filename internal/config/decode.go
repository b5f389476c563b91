package config

import (
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"

	"github.com/immutd/immutd/internal/quantity"
)

// decoder collects the diagnostics of one load.
type decoder struct {
	diags Diagnostics
}

func (d *decoder) errorf(r hcl.Range, field, format string, args ...any) {
	d.diags = append(d.diags, Diagnostic{Pos: rangePos(r), Field: field, Message: fmt.Sprintf(format, args...)})
}

// hclErrors records the errors among diagnostics from the HCL library,
// keeping their own positions.
func (d *decoder) hclErrors(field string, fallback hcl.Range, hd hcl.Diagnostics) {
	for _, h := range hd {
		if h.Severity != hcl.DiagError {
			continue
		}
		r := fallback
		if h.Subject != nil {
			r = *h.Subject
		}
		d.diags = append(d.diags, Diagnostic{Pos: rangePos(r), Field: field, Message: hclMessage(h)})
	}
}

// parse parses one file of native HCL syntax. It returns nil, with the
// syntax errors recorded, when the file does not parse: a body that did
// not parse would only produce follow-on errors.
func (d *decoder) parse(src []byte, filename string) *hclsyntax.Body {
	if pos, msg := checkText(src); msg != "" {
		d.errorf(hcl.Range{Filename: filename, Start: pos, End: pos}, "", "%s", msg)
		return nil
	}
	file, hd := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if hd.HasErrors() {
		d.hclErrors("", hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}, hd)
		return nil
	}
	body, ok := file.Body.(*hclsyntax.Body)
	if !ok {
		d.errorf(hcl.Range{Filename: filename, Start: hcl.InitialPos}, "", "not a native HCL file")
		return nil
	}
	return body
}

// checkText finds what no HCL file may contain: bytes that are not UTF-8,
// and control characters other than tab, newline and carriage return.
// Checking first keeps binary garbage (a file of random bytes) from
// costing the parser a hundred times its size in diagnostics.
func checkText(src []byte) (hcl.Pos, string) {
	line, col := 1, 1
	for i := 0; i < len(src); {
		r, size := utf8.DecodeRune(src[i:])
		pos := hcl.Pos{Line: line, Column: col, Byte: i}
		switch {
		case r == utf8.RuneError && size <= 1:
			return pos, fmt.Sprintf("not UTF-8 text (byte 0x%02x): a configuration file must be HCL text", src[i])
		case r < ' ' && r != '\t' && r != '\n' && r != '\r', r == 0x7f, r >= 0x80 && r < 0xa0:
			return pos, fmt.Sprintf("control character %U: a configuration file must be HCL text", r)
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return hcl.Pos{}, ""
}

// got says what a getter found.
type got int

const (
	missing got = iota // the attribute is absent: the default applies
	valid              // decoded and stored
	invalid            // present but wrong: the problem is recorded, nothing stored
)

// section decodes the body of one block (or of a whole file). Getters
// declare the attributes and blocks the section accepts; done reports
// everything else in the body as unknown. Adding an attribute to a block
// is one getter call in its decode function.
type section struct {
	d      *decoder
	path   string    // field path of the block; "" for a file's top level
	header hcl.Range // where missing required settings are reported
	body   *hclsyntax.Body
	attrs  []string // accepted attribute names, in the order asked for
	blocks []string // accepted block types
}

func (d *decoder) section(path string, header hcl.Range, body *hclsyntax.Body) *section {
	return &section{d: d, path: path, header: header, body: body}
}

// child is the section of a block nested in s.
func (s *section) child(b *hclsyntax.Block) *section {
	p := s.field(b.Type)
	for _, l := range b.Labels {
		p += " " + strconv.Quote(l)
	}
	return s.d.section(p, b.TypeRange, b.Body)
}

func (s *section) field(name string) string {
	if s.path == "" {
		return name
	}
	return s.path + "." + name
}

func (s *section) accept(name string) *hclsyntax.Attribute {
	if !slices.Contains(s.attrs, name) {
		s.attrs = append(s.attrs, name)
	}
	return s.body.Attributes[name]
}

// exprRange is the range of the named attribute's value, or the header
// when the attribute is absent.
func (s *section) exprRange(name string) hcl.Range {
	if a := s.body.Attributes[name]; a != nil {
		return a.Expr.Range()
	}
	return s.header
}

// fail reports a problem with the named attribute at its value.
func (s *section) fail(name, format string, args ...any) {
	s.d.errorf(s.exprRange(name), s.field(name), format, args...)
}

// required reports an absent required attribute at the block header.
func (s *section) required(name, expected string) {
	s.d.errorf(s.header, s.field(name), "missing required attribute; expected %s", expected)
}

// forbid accepts the attribute only to reject it with a reason.
func (s *section) forbid(name, reason string) {
	if a := s.accept(name); a != nil {
		s.d.errorf(a.NameRange, s.field(name), "%s", reason)
	}
}

// eval evaluates the named attribute. ok is false when the attribute is
// absent (a is nil) or when its value is unusable (recorded).
func (s *section) eval(name string) (a *hclsyntax.Attribute, v cty.Value, ok bool) {
	a = s.accept(name)
	if a == nil {
		return nil, cty.NilVal, false
	}
	v, hd := a.Expr.Value(nil)
	if hd.HasErrors() {
		s.d.hclErrors(s.field(name), a.Expr.Range(), hd)
		return a, cty.NilVal, false
	}
	if !v.IsWhollyKnown() {
		s.fail(name, "must be a constant value")
		return a, cty.NilVal, false
	}
	if v.IsNull() {
		s.fail(name, "must not be null")
		return a, cty.NilVal, false
	}
	return a, v, true
}

func typeName(v cty.Value) string {
	t := v.Type()
	switch {
	case v.IsNull():
		return "null"
	case t == cty.String:
		return "a string"
	case t == cty.Number:
		return "a number"
	case t == cty.Bool:
		return "a bool"
	case t.IsTupleType() || t.IsListType() || t.IsSetType():
		return "a list"
	case t.IsObjectType() || t.IsMapType():
		return "a map"
	default:
		return t.FriendlyName()
	}
}

// str decodes a string attribute.
func (s *section) str(name string, dst *string) got {
	return s.strAs(name, "a string", dst)
}

// strAs decodes a string attribute; expect describes a good value for
// the message about a value of the wrong type.
func (s *section) strAs(name, expect string, dst *string) got {
	a, v, ok := s.eval(name)
	if !ok {
		return gotFor(a)
	}
	sv, err := convert.Convert(v, cty.String)
	if err != nil {
		s.fail(name, "must be %s, got %s", expect, describe(v))
		return invalid
	}
	*dst = sv.AsString()
	return valid
}

// text decodes a string attribute that check accepts; check returns a
// complete message ("must be ..., got ...") for a bad value.
func (s *section) text(name string, dst *string, check func(string) error) got {
	var v string
	g := s.str(name, &v)
	if g != valid {
		return g
	}
	if err := check(v); err != nil {
		s.fail(name, "%v", err)
		return invalid
	}
	*dst = v
	return valid
}

// oneOf decodes a string attribute with a fixed set of values.
func (s *section) oneOf(name string, dst *string, allowed ...string) got {
	var v string
	g := s.strAs(name, orList(allowed), &v)
	if g != valid {
		return g
	}
	if !slices.Contains(allowed, v) {
		s.fail(name, "must be %s, got %q", orList(allowed), v)
		return invalid
	}
	*dst = v
	return valid
}

func (s *section) boolean(name string, dst *bool) got {
	a, v, ok := s.eval(name)
	if !ok {
		return gotFor(a)
	}
	bv, err := convert.Convert(v, cty.Bool)
	if err != nil {
		s.fail(name, "must be true or false, got %s", describe(v))
		return invalid
	}
	*dst = bv.True()
	return valid
}

// number decodes a number attribute (numeric strings are accepted, as HCL
// converts them); expect describes a good value.
func (s *section) number(name, expect string) (*big.Float, got) {
	a, v, ok := s.eval(name)
	if !ok {
		return nil, gotFor(a)
	}
	nv, err := convert.Convert(v, cty.Number)
	if err != nil {
		s.fail(name, "must be %s, got %s", expect, describe(v))
		return nil, invalid
	}
	return nv.AsBigFloat(), valid
}

// integer decodes a whole number from lo to hi.
func (s *section) integer(name string, lo, hi int, dst *int) got {
	f, g := s.number(name, intRange(lo, hi))
	if g != valid {
		return g
	}
	n, ok := wholeNumber(f)
	if !ok || n < int64(lo) || n > int64(hi) {
		s.fail(name, "must be %s, got %s", intRange(lo, hi), formatBig(f))
		return invalid
	}
	*dst = int(n)
	return valid
}

func wholeNumber(f *big.Float) (int64, bool) {
	if f == nil || !f.IsInt() {
		return 0, false
	}
	n, acc := f.Int64()
	return n, acc == big.Exact
}

func formatBig(f *big.Float) string {
	return f.Text('g', 10)
}

func intRange(lo, hi int) string {
	if hi >= math.MaxInt32 {
		return fmt.Sprintf("a whole number of at least %d", lo)
	}
	return fmt.Sprintf("a whole number from %d to %d", lo, hi)
}

// duration decodes a duration string ("10s") from lo to hi; hi = 0 means
// no upper bound.
func (s *section) duration(name string, lo, hi time.Duration, dst *time.Duration) got {
	const expect = `a duration like "10s", "500ms" or "1m30s"`
	var raw string
	g := s.strAs(name, expect, &raw)
	if g != valid {
		return g
	}
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		s.fail(name, "must be %s, got %q", expect, raw)
		return invalid
	case d < lo && lo == positive:
		s.fail(name, "must be greater than 0, got %s", formatDuration(d))
		return invalid
	case d < lo:
		s.fail(name, "must be at least %s, got %s", formatDuration(lo), formatDuration(d))
		return invalid
	case hi > 0 && d > hi:
		s.fail(name, "must be at most %s, got %s", formatDuration(hi), formatDuration(d))
		return invalid
	}
	*dst = d
	return valid
}

// formatDuration prints a duration without trailing zero units ("1m", not "1m0s").
func formatDuration(d time.Duration) string {
	out := d.String()
	if strings.HasSuffix(out, "m0s") {
		out = strings.TrimSuffix(out, "0s")
	}
	if strings.HasSuffix(out, "h0m") {
		out = strings.TrimSuffix(out, "0m")
	}
	return out
}

// list evaluates a list attribute and converts each element to elem;
// what names the element type in messages ("a string"). It returns the
// attribute's value expression and the elements; an element that does
// not convert is recorded and returned unknown (cty.DynamicVal), and the result is
// invalid.
func (s *section) list(name string, elem cty.Type, what string) (hclsyntax.Expression, []cty.Value, got) {
	a, v, ok := s.eval(name)
	if !ok {
		return nil, nil, gotFor(a)
	}
	t := v.Type()
	if !t.IsTupleType() && !t.IsListType() && !t.IsSetType() {
		s.fail(name, "must be a list of %ss, got %s", strings.TrimPrefix(what, "a "), describe(v))
		return nil, nil, invalid
	}
	out := make([]cty.Value, 0, v.LengthInt())
	good := true
	i := 0
	for it := v.ElementIterator(); it.Next(); i++ {
		_, ev := it.Element()
		cv, err := convert.Convert(ev, elem)
		if err != nil || cv.IsNull() {
			s.d.errorf(elemRange(a.Expr, i), s.field(name), "element %d must be %s, got %s", i, what, describe(ev))
			good = false
			cv = cty.DynamicVal
		}
		out = append(out, cv)
	}
	if !good {
		return a.Expr, out, invalid
	}
	return a.Expr, out, valid
}

// describe shows a bad value: a string or number as written, anything
// else by its type.
func describe(v cty.Value) string {
	switch {
	case v.IsNull():
		return "null"
	case v.Type() == cty.String:
		return strconv.Quote(v.AsString())
	case v.Type() == cty.Number:
		return formatBig(v.AsBigFloat())
	}
	return typeName(v)
}

// elemRange is the range of element i of a list literal, or of the whole
// expression when it is not a literal.
func elemRange(expr hclsyntax.Expression, i int) hcl.Range {
	if t, ok := expr.(*hclsyntax.TupleConsExpr); ok && i < len(t.Exprs) {
		return t.Exprs[i].Range()
	}
	return expr.Range()
}

// keyRange is the range of the key of a map literal, or of the whole
// expression when the key is not found.
func keyRange(expr hclsyntax.Expression, key string) hcl.Range {
	if o, ok := expr.(*hclsyntax.ObjectConsExpr); ok {
		for _, item := range o.Items {
			kv, hd := item.KeyExpr.Value(nil)
			if hd.HasErrors() || !kv.IsWhollyKnown() || kv.IsNull() {
				continue
			}
			if sv, err := convert.Convert(kv, cty.String); err == nil && sv.AsString() == key {
				return item.KeyExpr.Range()
			}
		}
	}
	return expr.Range()
}

// strings decodes a list of strings; check, when set, judges each element
// and returns a complete message for a bad one.
func (s *section) strList(name string, dst *[]string, check func(string) error) got {
	expr, elems, g := s.list(name, cty.String, "a string")
	if g == missing || expr == nil {
		return g
	}
	out := make([]string, 0, len(elems))
	good := g == valid
	for i, ev := range elems {
		if !ev.IsKnown() {
			continue
		}
		str := ev.AsString()
		if check != nil {
			if err := check(str); err != nil {
				s.d.errorf(elemRange(expr, i), s.field(name), "element %d %v", i, err)
				good = false
				continue
			}
		}
		out = append(out, str)
	}
	if !good {
		return invalid
	}
	*dst = out
	return valid
}

// ints decodes a non-empty list of whole numbers, each from lo to hi.
func (s *section) ints(name string, lo, hi int, dst *[]int) got {
	expr, elems, g := s.list(name, cty.Number, "a number")
	if g == missing || expr == nil {
		return g
	}
	if len(elems) == 0 {
		s.fail(name, "must list at least one value")
		return invalid
	}
	out := make([]int, 0, len(elems))
	good := g == valid
	for i, ev := range elems {
		if !ev.IsKnown() {
			continue
		}
		f := ev.AsBigFloat()
		n, ok := wholeNumber(f)
		if !ok || n < int64(lo) || n > int64(hi) {
			s.d.errorf(elemRange(expr, i), s.field(name), "element %d must be %s, got %s", i, intRange(lo, hi), formatBig(f))
			good = false
			continue
		}
		out = append(out, int(n))
	}
	if !good {
		return invalid
	}
	*dst = out
	return valid
}

// stringMap decodes a map of strings; check judges each key and value.
func (s *section) stringMap(name string, dst *map[string]string, check func(k, v string) error) got {
	a, v, ok := s.eval(name)
	if !ok {
		return gotFor(a)
	}
	if t := v.Type(); !t.IsObjectType() && !t.IsMapType() {
		s.fail(name, "must be a map of strings like { KEY = \"value\" }, got %s", describe(v))
		return invalid
	}
	out := make(map[string]string, v.LengthInt())
	good := true
	for it := v.ElementIterator(); it.Next(); {
		kv, ev := it.Element()
		key := kv.AsString()
		sv, err := convert.Convert(ev, cty.String)
		if err != nil || sv.IsNull() {
			s.d.errorf(keyRange(a.Expr, key), s.field(name), "value of %q must be a string, got %s", key, describe(ev))
			good = false
			continue
		}
		if err := check(key, sv.AsString()); err != nil {
			s.d.errorf(keyRange(a.Expr, key), s.field(name), "%v", err)
			good = false
			continue
		}
		out[key] = sv.AsString()
	}
	if !good {
		return invalid
	}
	*dst = out
	return valid
}

// size decodes a size such as "256MiB" or a number of bytes, at least lo.
func (s *section) size(name string, lo int64, dst *int64) got {
	a, v, ok := s.eval(name)
	if !ok {
		return gotFor(a)
	}
	raw := ""
	switch v.Type() {
	case cty.String:
		raw = v.AsString()
	case cty.Number:
		raw = v.AsBigFloat().Text('f', -1)
	default:
		s.fail(name, "must be a size like \"256MiB\" or a number of bytes, got %s", describe(v))
		return invalid
	}
	n, err := parseMemory(raw)
	switch {
	case err != nil:
		s.fail(name, "%v", err)
		return invalid
	case n < lo:
		s.fail(name, "must be at least %s, got %q", formatSize(lo), raw)
		return invalid
	}
	*dst = n
	return valid
}

// formatSize prints a byte count in the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		name string
		n    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.n && n%u.n == 0 {
			return fmt.Sprintf("%d%s", n/u.n, u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}

// quantity decodes a count (a number) or a percentage (a "N%" string).
func (s *section) quantity(name string, dst *Quantity) got {
	a, v, ok := s.eval(name)
	if !ok {
		return gotFor(a)
	}
	const expect = `a count like 1 or a percentage like "25%"`
	switch v.Type() {
	case cty.Number:
		f := v.AsBigFloat()
		n, ok := wholeNumber(f)
		if !ok || n < 0 || n > math.MaxInt32 {
			s.fail(name, "must be %s, got %s", expect, formatBig(f))
			return invalid
		}
		*dst = quantity.Count(int(n))
		return valid
	case cty.String:
		raw := v.AsString()
		q, err := quantity.Parse(raw)
		if err != nil {
			if strings.HasSuffix(strings.TrimSpace(raw), "%") {
				s.fail(name, "must be a percentage from 0%% to 100%%, got %q", raw)
			} else {
				s.fail(name, "must be %s, got %q", expect, raw)
			}
			return invalid
		}
		if !q.Percent && q.Value > math.MaxInt32 {
			s.fail(name, "must be %s, got %q", expect, raw)
			return invalid
		}
		*dst = q
		return valid
	default:
		s.fail(name, "must be %s, got %s", expect, describe(v))
		return invalid
	}
}

// Bounds of a kill rate ("5/10m").
const (
	maxRateCount = 256
	minRatePer   = time.Second
	maxRatePer   = 7 * 24 * time.Hour
)

// rate decodes a count per window such as "5/10m".
func (s *section) rate(name string, dst *quantity.Rate) got {
	var raw string
	if g := s.strAs(name, `a rate like "5/10m"`, &raw); g != valid {
		return g
	}
	r, err := quantity.ParseRate(raw)
	switch {
	case err != nil:
		s.fail(name, "%v", err)
		return invalid
	case r.N > maxRateCount:
		s.fail(name, "must allow at most %d per window, got %q", maxRateCount, raw)
		return invalid
	case r.Per < minRatePer || r.Per > maxRatePer:
		s.fail(name, "must have a window from %s to %s, got %q", formatDuration(minRatePer), formatDuration(maxRatePer), raw)
		return invalid
	}
	*dst = r
	return valid
}

func gotFor(a *hclsyntax.Attribute) got {
	if a == nil {
		return missing
	}
	return invalid
}

// block returns the single block of the type, or nil. Repeated blocks and
// labels are reported.
func (s *section) block(typ string) *hclsyntax.Block {
	s.acceptBlock(typ)
	var first *hclsyntax.Block
	for _, b := range s.body.Blocks {
		if b.Type != typ {
			continue
		}
		if len(b.Labels) > 0 {
			s.d.errorf(b.LabelRanges[0], s.field(typ), "a %s block takes no label", typ)
		}
		if first != nil {
			s.d.errorf(b.TypeRange, s.field(typ), "duplicate %s block; the first is at %s", typ, rangePos(first.TypeRange))
			continue
		}
		first = b
	}
	return first
}

// labelled returns the blocks of the type that carry exactly one label,
// in source order; the others are reported. what names the label.
func (s *section) labelled(typ, what string) []*hclsyntax.Block {
	s.acceptBlock(typ)
	var out []*hclsyntax.Block
	for _, b := range s.body.Blocks {
		if b.Type != typ {
			continue
		}
		switch len(b.Labels) {
		case 1:
			out = append(out, b)
		case 0:
			s.d.errorf(b.TypeRange, s.field(typ), "missing label; expected one label, the %s, as in %s \"name\" { ... }", what, typ)
		default:
			s.d.errorf(b.LabelRanges[1], s.field(typ+" "+strconv.Quote(b.Labels[0])), "expected one label, the %s, got %d labels", what, len(b.Labels))
		}
	}
	return out
}

func (s *section) acceptBlock(typ string) {
	if !slices.Contains(s.blocks, typ) {
		s.blocks = append(s.blocks, typ)
	}
}

// done reports every attribute and block that no getter accepted.
func (s *section) done() {
	names := make([]string, 0, len(s.body.Attributes))
	for name := range s.body.Attributes {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if slices.Contains(s.attrs, name) {
			continue
		}
		a := s.body.Attributes[name]
		var msg string
		switch {
		case slices.Contains(s.blocks, name):
			msg = fmt.Sprintf("%s is a block, not an attribute; write %s { ... }", name, name)
		default:
			msg = "unknown attribute; " + expectation(name, s.attrs, "attributes")
		}
		s.d.errorf(a.NameRange, s.field(name), "%s", msg)
	}
	for _, b := range s.body.Blocks {
		if slices.Contains(s.blocks, b.Type) {
			continue
		}
		var msg string
		switch {
		case slices.Contains(s.attrs, b.Type):
			msg = fmt.Sprintf("%s is an attribute, not a block; write %s = ...", b.Type, b.Type)
		default:
			msg = "unknown block; " + expectation(b.Type, s.blocks, "blocks")
		}
		s.d.errorf(b.TypeRange, s.field(b.Type), "%s", msg)
	}
}

// expectation tells what a block accepts instead of an unknown name.
func expectation(name string, known []string, kind string) string {
	if len(known) == 0 {
		return "this block takes no " + kind
	}
	if best := suggest(name, known); best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return "expected one of " + strings.Join(known, ", ")
}

// suggest returns the known name closest to name, if it is close enough
// to be a likely typo.
func suggest(name string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(name, k); d < bestDist && d < len(name) {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// orList formats allowed values as `"a", "b" or "c"`.
func orList(values []string) string {
	q := make([]string, len(values))
	for i, v := range values {
		q[i] = strconv.Quote(v)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
