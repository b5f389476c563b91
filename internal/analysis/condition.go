package analysis

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

const (
	// MaxConditionLength bounds the length of a condition, in bytes.
	MaxConditionLength = 512
	// MaxConditionDepth bounds how deep "(" and "!" nest in a condition.
	MaxConditionDepth = 32
	// maxIndex bounds N in result[N]; no query result is that long.
	maxIndex = 1 << 20
)

// ErrEmptyResult is the error, wrapped, of Condition.Eval when the
// condition reads a value of a result that has none.
var ErrEmptyResult = errors.New("empty result")

// Condition is a parsed success or failure condition (see the package
// comment for the language). The zero Condition is "not set": its Eval
// returns an error and its String is "".
type Condition struct {
	src  string
	root node
}

// ParseCondition parses s. Errors name the byte column where parsing
// stopped.
func ParseCondition(s string) (Condition, error) {
	if len(s) > MaxConditionLength {
		return Condition{}, fmt.Errorf("analysis: condition is %d bytes long, more than %d", len(s), MaxConditionLength)
	}
	toks, err := lex(s)
	if err == nil {
		p := &parser{toks: toks}
		var root node
		if root, err = p.parse(); err == nil {
			return Condition{src: s, root: root}, nil
		}
	}
	var pe *parseError
	if errors.As(err, &pe) {
		return Condition{}, fmt.Errorf("analysis: condition %q: column %d: %s", s, pe.col, pe.msg)
	}
	return Condition{}, fmt.Errorf("analysis: condition %q: %w", s, err)
}

// MustParseCondition is ParseCondition for constants in tests and
// examples: it panics on an error.
func MustParseCondition(s string) Condition {
	c, err := ParseCondition(s)
	if err != nil {
		panic(err)
	}
	return c
}

// String returns the condition as it was written.
func (c Condition) String() string { return c.src }

// IsZero reports whether c is the zero Condition (not set).
func (c Condition) IsZero() bool { return c.root == nil }

// MarshalText returns the condition as it was written, so a Condition
// serialises as its source.
func (c Condition) MarshalText() ([]byte, error) { return []byte(c.src), nil }

// UnmarshalText parses b; an empty b gives the zero Condition.
func (c *Condition) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*c = Condition{}
		return nil
	}
	parsed, err := ParseCondition(string(b))
	if err != nil {
		return err
	}
	*c = parsed
	return nil
}

// Eval evaluates c against the values of one query result. It returns an
// error when c reads a value that result does not have (ErrEmptyResult
// for an empty result) and when c is not set.
func (c Condition) Eval(result []float64) (bool, error) {
	if c.root == nil {
		return false, errors.New("analysis: condition not set")
	}
	ok, err := c.root.eval(result)
	if err != nil {
		return false, fmt.Errorf("analysis: condition %q: %w", c.src, err)
	}
	return ok, nil
}

// The syntax tree.

type node interface {
	eval(result []float64) (bool, error)
}

type orNode struct{ left, right node }

func (n orNode) eval(r []float64) (bool, error) {
	ok, err := n.left.eval(r)
	if err != nil || ok {
		return ok, err
	}
	return n.right.eval(r)
}

type andNode struct{ left, right node }

func (n andNode) eval(r []float64) (bool, error) {
	ok, err := n.left.eval(r)
	if err != nil || !ok {
		return false, err
	}
	return n.right.eval(r)
}

type notNode struct{ inner node }

func (n notNode) eval(r []float64) (bool, error) {
	ok, err := n.inner.eval(r)
	return !ok && err == nil, err
}

type isNaNNode struct{ ref operand }

func (n isNaNNode) eval(r []float64) (bool, error) {
	v, err := n.ref.value(r)
	return v != v, err // only NaN differs from itself
}

// cmpNode is "operand op number", or "number op operand" when numLeft.
type cmpNode struct {
	operand operand
	op      string
	number  float64
	numLeft bool
}

func (n cmpNode) eval(r []float64) (bool, error) {
	v, err := n.operand.value(r)
	if err != nil {
		return false, err
	}
	if n.numLeft {
		return compare(n.number, n.op, v), nil
	}
	return compare(v, n.op, n.number), nil
}

func compare(a float64, op string, b float64) bool {
	switch op {
	case "<":
		return a < b
	case "<=":
		return a <= b
	case ">":
		return a > b
	case ">=":
		return a >= b
	case "==":
		return a == b
	default: // "!=", the only other operator the parser makes
		return a != b
	}
}

// operand is result (index 0), result[index], or len(result).
type operand struct {
	length bool
	index  int
}

func (o operand) value(r []float64) (float64, error) {
	switch {
	case o.length:
		return float64(len(r)), nil
	case len(r) == 0:
		return 0, ErrEmptyResult
	case o.index >= len(r):
		return 0, fmt.Errorf("result[%d] out of range: %d values", o.index, len(r))
	}
	return r[o.index], nil
}

// The lexer.

type tokKind int

const (
	tokEOF tokKind = iota
	tokNumber
	tokIdent
	tokCmp   // < <= > >= == !=
	tokPunct // && || ! ( ) [ ]
)

type token struct {
	kind tokKind
	text string
	col  int // byte column, from 1
	num  float64
}

// parseError is an error at a column of the condition.
type parseError struct {
	col int
	msg string
}

func (e *parseError) Error() string { return fmt.Sprintf("column %d: %s", e.col, e.msg) }

func errAt(col int, format string, args ...any) error {
	return &parseError{col: col, msg: fmt.Sprintf(format, args...)}
}

// operators lists the operators and punctuation, longer ones first.
var operators = []struct {
	text string
	kind tokKind
}{
	{"<=", tokCmp}, {">=", tokCmp}, {"==", tokCmp}, {"!=", tokCmp},
	{"&&", tokPunct}, {"||", tokPunct},
	{"<", tokCmp}, {">", tokCmp},
	{"!", tokPunct}, {"(", tokPunct}, {")", tokPunct}, {"[", tokPunct}, {"]", tokPunct},
}

func lex(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		var t token
		var err error
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
			continue
		case isLetter(c):
			t = token{kind: tokIdent, text: scanWhile(s, i, isIdentByte)}
		case isNumberStart(s, i):
			t, err = lexNumber(s, i)
		default:
			t, err = lexOperator(s, i)
		}
		if err != nil {
			return nil, err
		}
		t.col = i + 1
		toks = append(toks, t)
		i += len(t.text)
	}
	return append(toks, token{kind: tokEOF, col: len(s) + 1}), nil
}

func lexOperator(s string, i int) (token, error) {
	for _, op := range operators {
		if len(s)-i >= len(op.text) && s[i:i+len(op.text)] == op.text {
			return token{kind: op.kind, text: op.text}, nil
		}
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return token{}, errAt(i+1, "unexpected %q", string(r))
}

// lexNumber scans a number at s[i]: an optional sign, then digits,
// letters, "_" and ".", and a sign right after an exponent letter (e, E,
// or p, P for hexadecimal); what it scans must parse as a Go float.
func lexNumber(s string, i int) (token, error) {
	j := i
	if s[j] == '+' || s[j] == '-' {
		j++
	}
	for j < len(s) {
		c := s[j]
		if isIdentByte(c) || c == '.' {
			j++
			continue
		}
		if (c == '+' || c == '-') && isExponent(s[j-1]) {
			j++
			continue
		}
		break
	}
	text := s[i:j]
	v, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return token{}, errAt(i+1, "bad number %q", text)
	}
	return token{kind: tokNumber, text: text, num: v}, nil
}

func isNumberStart(s string, i int) bool {
	if s[i] == '+' || s[i] == '-' {
		i++
	}
	return i < len(s) && (isDigit(s[i]) || s[i] == '.')
}

func isExponent(c byte) bool  { return c == 'e' || c == 'E' || c == 'p' || c == 'P' }
func isDigit(c byte) bool     { return c >= '0' && c <= '9' }
func isLetter(c byte) bool    { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
func isIdentByte(c byte) bool { return isLetter(c) || isDigit(c) }

func scanWhile(s string, i int, f func(byte) bool) string {
	j := i
	for j < len(s) && f(s[j]) {
		j++
	}
	return s[i:j]
}

// The parser: recursive descent over the tokens, one function per rule
// of the grammar in the package comment.

type parser struct {
	toks  []token
	pos   int
	depth int
}

func (p *parser) peek() token { return p.toks[p.pos] }

func (p *parser) next() token {
	t := p.toks[p.pos]
	if t.kind != tokEOF {
		p.pos++
	}
	return t
}

// accept consumes the next token when its text is text.
func (p *parser) accept(text string) bool {
	if t := p.peek(); t.kind != tokEOF && t.text == text {
		p.pos++
		return true
	}
	return false
}

func (p *parser) expect(text string) error {
	if p.accept(text) {
		return nil
	}
	return unexpected(p.peek())
}

func unexpected(t token) error {
	if t.kind == tokEOF {
		return errAt(t.col, "unexpected end of condition")
	}
	return errAt(t.col, "unexpected %q", t.text)
}

func (p *parser) parse() (node, error) {
	n, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tokEOF {
		return nil, unexpected(t)
	}
	return n, nil
}

func (p *parser) parseOr() (node, error) {
	left, err := p.parseAnd()
	for err == nil && p.accept("||") {
		var right node
		if right, err = p.parseAnd(); err == nil {
			left = orNode{left, right}
		}
	}
	return left, err
}

func (p *parser) parseAnd() (node, error) {
	left, err := p.parseUnary()
	for err == nil && p.accept("&&") {
		var right node
		if right, err = p.parseUnary(); err == nil {
			left = andNode{left, right}
		}
	}
	return left, err
}

func (p *parser) parseUnary() (node, error) {
	t := p.peek()
	nests := t.kind == tokPunct && (t.text == "!" || t.text == "(")
	if !nests {
		return p.parseTerm()
	}
	if p.depth >= MaxConditionDepth {
		return nil, errAt(t.col, "nested deeper than %d", MaxConditionDepth)
	}
	p.depth++
	defer func() { p.depth-- }()
	p.next()
	if t.text == "!" {
		inner, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		return notNode{inner}, nil
	}
	inner, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	return inner, p.expect(")")
}

func (p *parser) parseTerm() (node, error) {
	t := p.peek()
	switch {
	case t.kind == tokIdent && t.text == "isNaN":
		p.next()
		if err := p.expect("("); err != nil {
			return nil, err
		}
		ref, err := p.parseRef()
		if err != nil {
			return nil, err
		}
		return isNaNNode{ref}, p.expect(")")
	case t.kind == tokNumber:
		p.next()
		op, err := p.parseOp()
		if err != nil {
			return nil, err
		}
		o, err := p.parseOperand()
		return cmpNode{operand: o, op: op, number: t.num, numLeft: true}, err
	}
	o, err := p.parseOperand()
	if err != nil {
		return nil, err
	}
	op, err := p.parseOp()
	if err != nil {
		return nil, err
	}
	num := p.next()
	if num.kind != tokNumber {
		return nil, unexpected(num)
	}
	return cmpNode{operand: o, op: op, number: num.num}, nil
}

func (p *parser) parseOp() (string, error) {
	t := p.next()
	if t.kind != tokCmp {
		return "", unexpected(t)
	}
	return t.text, nil
}

func (p *parser) parseOperand() (operand, error) {
	t := p.peek()
	if t.kind != tokIdent || t.text != "len" {
		return p.parseRef()
	}
	p.next()
	for _, want := range []string{"(", "result", ")"} {
		if err := p.expect(want); err != nil {
			return operand{}, err
		}
	}
	return operand{length: true}, nil
}

func (p *parser) parseRef() (operand, error) {
	t := p.next()
	if t.kind != tokIdent || t.text != "result" {
		return operand{}, unexpected(t)
	}
	if !p.accept("[") {
		return operand{}, nil
	}
	idx := p.next()
	if idx.kind != tokNumber {
		return operand{}, unexpected(idx)
	}
	n, err := strconv.Atoi(idx.text)
	if err != nil || n < 0 || n > maxIndex || !isDigit(idx.text[0]) {
		return operand{}, errAt(idx.col, "bad index %q", idx.text)
	}
	return operand{index: n}, p.expect("]")
}
