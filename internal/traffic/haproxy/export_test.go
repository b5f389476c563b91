package haproxy

// SetMaxAnswer lowers the bound on one answer, for a test of the bound.
func SetMaxAnswer(b *Backend, n int) { b.maxAnswer = n }
