package reconcile

import (
	"fmt"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/state"
)

// benchInput builds 1,000 fleets of 100 instances: mostly steady, with a
// sprinkling of unhealthy, exited, outdated and mutated instances so every
// branch of the planner runs.
func benchInput(fleets, per int) Input {
	in := Input{Now: t0, Fleets: make([]FleetInput, 0, fleets)}
	for f := 0; f < fleets; f++ {
		d := desired(per)
		d.Spec.Name = fmt.Sprintf("fleet-%04d", f)
		fi := FleetInput{Desired: d, Instances: make([]Inst, 0, per)}
		for i := 0; i < per; i++ {
			id := fmt.Sprintf("%s-%03d", d.Spec.Name, i)
			x := inst(id, age(time.Duration(i)*time.Minute))
			x.Record.Fleet, x.Observed.Fleet = d.Spec.Name, d.Spec.Name
			switch i % 50 {
			case 1:
				x.Health = Unhealthy
			case 2:
				x.Observed.Phase = instance.Exited
			case 3:
				x.Observed.ImageDigest = imgOld
			case 4:
				x.Drift = &instance.Finding{Kind: instance.DriftMutated, Evidence: []string{"modified a"}}
			case 5:
				x.Open = &state.Intent{OpID: "op-" + id, Kind: state.Terminate}
			}
			fi.Instances = append(fi.Instances, x)
		}
		in.Fleets = append(in.Fleets, fi)
	}
	return in
}

// BenchmarkPlan100k is one full planning pass over 100,000 instances in
// 1,000 fleets.
func BenchmarkPlan100k(b *testing.B) {
	in := benchInput(1000, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res := Plan(in)
		if len(res.Fleets) != 1000 {
			b.Fatal("short result")
		}
	}
}

// BenchmarkScanBaseline100k is the floor the planner is compared with in
// the same run: one pass over the same 100,000 instances that only reads
// the fields every plan must read and counts by state.
func BenchmarkScanBaseline100k(b *testing.B) {
	in := benchInput(1000, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		n := 0
		for fi := range in.Fleets {
			f := &in.Fleets[fi]
			for i := range f.Instances {
				x := &f.Instances[i]
				if x.Open == nil && x.Observed != nil && x.Observed.Phase == instance.Running &&
					x.Observed.ImageDigest == f.Desired.ImageDigest && x.Health == Healthy && x.Drift == nil {
					n++
				}
			}
		}
		if n == 0 {
			b.Fatal("nothing counted")
		}
	}
}
