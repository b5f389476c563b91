package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// BenchmarkFsyncBaseline is the floor every durable commit pays: one small
// write plus fsync on the same disk as the raft log, in a loop.
func BenchmarkFsyncBaseline(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "fsync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 256)
	for b.Loop() {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fsyncs/s")
}

// benchCommit applies entries of `batch` launch intents from `writers`
// concurrent appliers to a 3-node cluster on loopback and reports
// committed entries and state transitions (intents) per second.
func benchCommit(b *testing.B, writers, batch int) {
	tc := newTestCluster(b, 3, func(c *Config) { c.Timing = DefaultTiming() })
	l := tc.leader()
	n := tc.nodes[l]
	ctx := context.Background()
	if _, err := n.Apply(ctx, &state.SetDesired{Fleets: []*state.DesiredFleet{{Spec: state.FleetSpec{Name: "web", Size: 1}, ImageDigest: "d"}}}); err != nil {
		b.Fatal(err)
	}
	var seq atomic.Int64
	var entries atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/writers + 1
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				its := make([]*state.Intent, batch)
				for k := range its {
					id := seq.Add(1)
					its[k] = &state.Intent{OpID: fmt.Sprintf("op-%d", id), Kind: state.Launch, Fleet: "web", InstanceID: fmt.Sprintf("web-%d", id), ImageDigest: "d"}
				}
				res, err := n.Apply(ctx, &state.CommitIntents{Generation: 1, Intents: its, At: time.Unix(0, 0)})
				if err != nil || len(res.Accepted) != batch {
					b.Errorf("apply: %v %+v", err, res)
					return
				}
				entries.Add(1)
			}
		}()
	}
	wg.Wait()
	secs := b.Elapsed().Seconds()
	b.ReportMetric(float64(entries.Load())/secs, "entries/s")
	b.ReportMetric(float64(entries.Load())*float64(batch)/secs, "transitions/s")
}

func BenchmarkRaftCommit1Writer1PerEntry(b *testing.B)    { benchCommit(b, 1, 1) }
func BenchmarkRaftCommit64Writers1PerEntry(b *testing.B)  { benchCommit(b, 64, 1) }
func BenchmarkRaftCommit64Writers16PerEntry(b *testing.B) { benchCommit(b, 64, 16) }
