package analysis

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

var nan = math.NaN()

func TestConditionEval(t *testing.T) {
	inf := math.Inf(1)
	tests := []struct {
		cond   string
		result []float64
		want   bool
	}{
		{"result < 1", []float64{0.5}, true},
		{"result < 1", []float64{1}, false},
		{"result <= 1", []float64{1}, true},
		{"result > 1", []float64{1, 5}, false}, // result is the first value
		{"result >= 5", []float64{5}, true},
		{"result == 2", []float64{2}, true},
		{"result != 2", []float64{3}, true},
		{"1 > result", []float64{0.5}, true},
		{"1 <= result", []float64{0.5}, false},
		{"-1 < result", []float64{0}, true},
		{"result[1] >= 2", []float64{0, 2}, true},
		{"result[0] >= 2", []float64{0, 2}, false},
		{"len(result) == 0", nil, true},
		{"len(result) == 2", []float64{1, 1}, true},
		{"0 < len(result)", []float64{1}, true},
		// NaN compares false, except !=.
		{"result < 1", []float64{nan}, false},
		{"result >= 1", []float64{nan}, false},
		{"result == 1", []float64{nan}, false},
		{"result != 1", []float64{nan}, true},
		{"result > 1e300", []float64{inf}, true},
		{"result < -1e300", []float64{-inf}, true},
		{"isNaN(result)", []float64{nan}, true},
		{"isNaN(result)", []float64{1}, false},
		{"isNaN(result[1])", []float64{1, nan}, true},
		{"!isNaN(result) && result < 0.01", []float64{0.001}, true},
		{"!isNaN(result) && result < 0.01", []float64{nan}, false},
		// Numbers.
		{"result < 1e3", []float64{999}, true},
		{"result < 1E+3", []float64{1001}, false},
		{"result > 1.5e-3", []float64{0.002}, true},
		{"result < 1_000", []float64{999}, true},
		{"result < 0x1p-2", []float64{0.2}, true},
		{"result > .5", []float64{0.6}, true},
		{"result > -0.5", []float64{0}, true},
		{"result > +2", []float64{3}, true},
		// Logic: && binds tighter than ||, both short-circuit.
		{"result < 1 || result > 5 && result > 10", []float64{0.5}, true},
		{"(result < 1 || result > 5) && result > 10", []float64{0.5}, false},
		{"len(result) > 0 && result > 1", nil, false},
		{"len(result) == 0 || result > 1", nil, true},
		{"result > 1 || result[5] > 1", []float64{2}, true},
		{"result < 1 && result[5] > 1", []float64{2}, false},
		{"!(result > 1)", []float64{0}, true},
		{"!!(result > 1)", []float64{2}, true},
		{"!(result > 1) || !(result < 3)", []float64{2}, false},
		{"((result > 1))", []float64{2}, true},
		// Spacing.
		{"result[0]<1", []float64{0}, true},
		{"\tresult\n<\r1 ", []float64{0}, true},
		{"len(result)>=1&&result[0]!=-1", []float64{0}, true},
	}
	for _, tc := range tests {
		c, err := ParseCondition(tc.cond)
		if err != nil {
			t.Errorf("ParseCondition(%q): %v", tc.cond, err)
			continue
		}
		got, err := c.Eval(tc.result)
		if err != nil || got != tc.want {
			t.Errorf("%q.Eval(%v) = %v, %v; want %v", tc.cond, tc.result, got, err, tc.want)
		}
		if c.String() != tc.cond {
			t.Errorf("String() = %q, want %q", c.String(), tc.cond)
		}
	}
}

func TestConditionEvalErrors(t *testing.T) {
	tests := []struct {
		cond   string
		result []float64
		want   string
		empty  bool
	}{
		{"result > 1", nil, `analysis: condition "result > 1": empty result`, true},
		{"isNaN(result)", []float64{}, `analysis: condition "isNaN(result)": empty result`, true},
		{"!(result > 1)", nil, `analysis: condition "!(result > 1)": empty result`, true},
		{"1 < result[0]", nil, `analysis: condition "1 < result[0]": empty result`, true},
		{"result[2] > 1", []float64{1, 2}, `analysis: condition "result[2] > 1": result[2] out of range: 2 values`, false},
		{"result > 0 && result[1] > 1", []float64{1}, `analysis: condition "result > 0 && result[1] > 1": result[1] out of range: 1 values`, false},
	}
	for _, tc := range tests {
		c := MustParseCondition(tc.cond)
		got, err := c.Eval(tc.result)
		if err == nil || err.Error() != tc.want || got {
			t.Errorf("%q.Eval(%v) = %v, %v; want false, %s", tc.cond, tc.result, got, err, tc.want)
			continue
		}
		if errors.Is(err, ErrEmptyResult) != tc.empty {
			t.Errorf("%q: errors.Is(err, ErrEmptyResult) = %v, want %v", tc.cond, !tc.empty, tc.empty)
		}
	}
	var zero Condition
	if _, err := zero.Eval([]float64{1}); err == nil || err.Error() != "analysis: condition not set" {
		t.Errorf("zero Condition Eval error = %v", err)
	}
	if !zero.IsZero() || MustParseCondition("result > 1").IsZero() {
		t.Error("IsZero is wrong")
	}
}

func TestParseConditionErrors(t *testing.T) {
	deep := strings.Repeat("(", MaxConditionDepth+1) + "result < 1" + strings.Repeat(")", MaxConditionDepth+1)
	nots := strings.Repeat("!", MaxConditionDepth+1) + "(result < 1)"
	tests := []struct{ cond, want string }{
		{"result >> 1", `column 9: unexpected ">"`},
		{"", `column 1: unexpected end of condition`},
		{"   ", `column 4: unexpected end of condition`},
		{"result", `column 7: unexpected end of condition`},
		{"result < ", `column 10: unexpected end of condition`},
		{"result = 1", `column 8: unexpected "="`},
		{"result < 1 & result > 0", `column 12: unexpected "&"`},
		{"result < 1 | result > 0", `column 12: unexpected "|"`},
		{"result < 1 &&", `column 14: unexpected end of condition`},
		{"foo > 1", `column 1: unexpected "foo"`},
		{"Result > 1", `column 1: unexpected "Result"`},
		{"result - 1 > 0", `column 8: unexpected "-"`},
		{"result < 1e", `column 10: bad number "1e"`},
		{"result < 1e400", `column 10: bad number "1e400"`},
		{"result < 1x", `column 10: bad number "1x"`},
		{"result < 1..2", `column 10: bad number "1..2"`},
		{"result < NaN", `column 10: unexpected "NaN"`},
		{"result < +Inf", `column 10: unexpected "+"`},
		{"result[1.5] < 1", `column 8: bad index "1.5"`},
		{"result[-1] < 1", `column 8: bad index "-1"`},
		{"result[+1] < 1", `column 8: bad index "+1"`},
		{"result[99999999] < 1", `column 8: bad index "99999999"`},
		{"result[] < 1", `column 8: unexpected "]"`},
		{"result[1 < 2", `column 10: unexpected "<"`},
		{"len(result[0]) > 1", `column 11: unexpected "["`},
		{"len result > 1", `column 5: unexpected "result"`},
		{"isNaN(len(result))", `column 7: unexpected "len"`},
		{"isNaN(result) > 1", `column 15: unexpected ">"`},
		{"isNaN result", `column 7: unexpected "result"`},
		{"result < result", `column 10: unexpected "result"`},
		{"1 < 2", `column 5: unexpected "2"`},
		{"(result < 1", `column 12: unexpected end of condition`},
		{"result < 1)", `column 11: unexpected ")"`},
		{"result < 1 2", `column 12: unexpected "2"`},
		{"()", `column 2: unexpected ")"`},
		{"résult < 1", `column 2: unexpected "é"`},
		{"result < 1 ;", `column 12: unexpected ";"`},
		{deep, `column 33: nested deeper than 32`},
		{nots, `column 33: nested deeper than 32`},
	}
	for _, tc := range tests {
		_, err := ParseCondition(tc.cond)
		want := "analysis: condition " + strconv.Quote(tc.cond) + ": " + tc.want
		if err == nil || err.Error() != want {
			t.Errorf("ParseCondition(%q) error = %v\n want %s", tc.cond, err, want)
		}
	}
	// At the limits, conditions parse.
	ok := strings.Repeat("(", MaxConditionDepth) + "result < 1" + strings.Repeat(")", MaxConditionDepth)
	if _, err := ParseCondition(ok); err != nil {
		t.Errorf("depth %d: %v", MaxConditionDepth, err)
	}
	long := "result < 1" + strings.Repeat(" ", MaxConditionLength-len("result < 1"))
	if _, err := ParseCondition(long); err != nil {
		t.Errorf("length %d: %v", len(long), err)
	}
	_, err := ParseCondition(long + " ")
	if want := "analysis: condition is 513 bytes long, more than 512"; err == nil || err.Error() != want {
		t.Errorf("too long: error = %v, want %s", err, want)
	}
}

func TestConditionText(t *testing.T) {
	type doc struct {
		Success Condition `json:"success"`
		Failure Condition `json:"failure"`
	}
	in := doc{Success: MustParseCondition("result < 1")}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"success":"result \u003c 1","failure":""}` { // encoding/json escapes <
		t.Fatalf("Marshal = %s", b)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Success.String() != "result < 1" || !out.Failure.IsZero() {
		t.Fatalf("round trip = %+v", out)
	}
	if ok, err := out.Success.Eval([]float64{0}); !ok || err != nil {
		t.Fatalf("Eval after round trip = %v, %v", ok, err)
	}
	if err := json.Unmarshal([]byte(`{"success":"result <"}`), &out); err == nil {
		t.Fatal("Unmarshal of a bad condition succeeded")
	}
}

// TestConditionCompareProperty checks comparisons against Go's own, in
// both orders, for any value (NaN and infinities included) and threshold.
func TestConditionCompareProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		x := rapid.OneOf(rapid.Float64(), rapid.SampledFrom([]float64{nan, math.Inf(1), math.Inf(-1), 0, 1})).Draw(t, "x")
		th := rapid.Float64Range(-1e300, 1e300).Draw(t, "threshold")
		op := rapid.SampledFrom([]string{"<", "<=", ">", ">=", "==", "!="}).Draw(t, "op")
		num := strconv.FormatFloat(th, 'g', -1, 64)
		c, err := ParseCondition("result " + op + " " + num)
		if err != nil {
			t.Fatal(err)
		}
		flipped := MustParseCondition(num + " " + op + " len(result)")
		got, err := c.Eval([]float64{x})
		if err != nil || got != compare(x, op, th) {
			t.Fatalf("%s.Eval(%v) = %v, %v", c, x, got, err)
		}
		got, err = flipped.Eval([]float64{x})
		if err != nil || got != compare(th, op, 1) {
			t.Fatalf("%s.Eval(%v) = %v, %v", flipped, x, got, err)
		}
	})
}

func TestCompare(t *testing.T) {
	// compare is the reference of the property above: check it by hand.
	for _, tc := range []struct {
		a    float64
		op   string
		b    float64
		want bool
	}{
		{1, "<", 2, true}, {2, "<", 1, false}, {1, "<=", 1, true}, {2, ">", 1, true},
		{1, ">=", 1, true}, {1, "==", 1, true}, {1, "!=", 1, false}, {nan, "!=", nan, true},
		{nan, "==", nan, false}, {nan, "<", 1, false}, {1, ">=", nan, false},
	} {
		if got := compare(tc.a, tc.op, tc.b); got != tc.want {
			t.Errorf("compare(%v %s %v) = %v", tc.a, tc.op, tc.b, got)
		}
	}
}
