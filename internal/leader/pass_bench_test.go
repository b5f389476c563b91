package leader

import (
	"fmt"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// benchRig is a term over fleets of 1,000 healthy instances each of the
// fake provider, converged: each pass then is a steady-state pass that
// reads the state, lists the provider, judges, plans and publishes, and
// changes nothing.
func benchRig(b *testing.B, instances int) *rig {
	b.Helper()
	r := newRig(b)
	var specs []state.FleetSpec
	for n := 0; n < instances; n += 1000 {
		s := spec(fmt.Sprintf("f%03d", len(specs)), min(1000, instances-n))
		specs = append(specs, s)
	}
	r.commit(specs...)
	for deadline := time.Now().Add(10 * time.Minute); ; {
		r.step()
		r.clk.advance(time.Second)
		_, _, have := r.p.state()
		if have == instances && r.openIntents() == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d instances after 10 minutes of passes", have, instances)
		}
	}
	return r
}

func benchmarkPass(b *testing.B, instances int) {
	r := benchRig(b, instances)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.clk.advance(time.Second)
		r.step()
	}
	b.StopTimer()
	if launched, terminated, have := r.p.state(); have != instances || len(launched) != instances || len(terminated) != 0 {
		b.Fatalf("steady passes changed the fleet: %d instances, %d launched, %d terminated", have, len(launched), len(terminated))
	}
}

func BenchmarkSteadyPass10k(b *testing.B)  { benchmarkPass(b, 10_000) }
func BenchmarkSteadyPass100k(b *testing.B) { benchmarkPass(b, 100_000) }
