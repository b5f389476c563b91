// Package analysis owns the metric gates of immutd rollouts, with the
// semantics of Argo Rollouts' analysis: a small client for instant queries
// against one Prometheus server's HTTP API (client.go), a tiny language for
// success and failure conditions (condition.go), and the pure bookkeeping
// that turns query results into measurements, measurements into a tally
// per metric, and tallies into an outcome (measure.go).
//
// Everything but Client is pure: no clock reads (times are arguments), no
// goroutines, no global state. Scheduling measurements (interval, initial
// delay, the end of a step) and acting on an outcome (abort, pause,
// promote) belong to the caller; a Tally is small and JSON-serialisable so
// that the caller can keep it in replicated state across leader failover.
//
// # Conditions
//
// A condition is evaluated against the values of one query result, in the
// order Client.Query returns them:
//
//	condition  = or
//	or         = and { "||" and }
//	and        = unary { "&&" unary }
//	unary      = "!" unary | "(" or ")" | term
//	term       = "isNaN" "(" ref ")" | operand op number | number op operand
//	operand    = ref | "len" "(" "result" ")"
//	ref        = "result" [ "[" index "]" ]
//	op         = "<" | "<=" | ">" | ">=" | "==" | "!="
//
// result is the first value, result[N] the value at index N (a decimal
// integer, from 0) and len(result) the number of values. A number has the
// syntax of a Go floating-point literal with an optional sign ("0.01",
// "-1", "1e3", "1_000", "0x1p-4"); NaN and Inf are not numbers of the
// language, test for NaN with isNaN. Comparisons follow IEEE 754 as Go
// does: every comparison with a NaN is false except != which is true.
// Spaces, tabs and newlines may separate tokens.
//
// && binds tighter than ||, and both evaluate left to right and stop as
// soon as the outcome is known, so "len(result) > 0 && result > 1" never
// reads a missing value. Reading a missing value is an error, not false:
// an empty result makes "result > 1" fail with ErrEmptyResult and
// "result[2]" needs at least three values. Measure counts such an error
// as a measurement error, as it does a failed query.
//
// A condition is at most MaxConditionLength bytes long and nests "(" and
// "!" at most MaxConditionDepth deep. Errors name the byte column (from 1)
// where parsing stopped:
//
//	analysis: condition "result >> 1": column 9: unexpected ">"
//
// # Measurements and outcomes
//
// Measure classifies one query result as a Phase; Tally.Add counts it;
// Judge applies a metric's limits to its tally; Decide combines the
// metrics of one analysis into one Outcome. The rules are Argo's, with the
// exceptions written in Measure's and Tally.Add's comments.
package analysis
