package probe

import (
	"hash/fnv"
	"time"
)

// A starting check is probed densely at first and then less often: the
// gap after a probe is half the time since the job's first probe, at
// least startingFirstGap and at most startingInterval (or the check's
// interval when that is shorter). A new instance usually answers within
// tens of milliseconds of its start, so it is judged healthy soon after
// it serves; one that takes long to start costs about ten probes a
// second.
const (
	startingFirstGap = 10 * time.Millisecond
	startingInterval = 100 * time.Millisecond
)

// nextDue returns when a check is probed next. prev is when the probe
// that just completed was due, now is the current time, first is when
// the job's first probe was due.
//
// A starting check is probed on the gaps above. Any other check runs on a
// fixed grid: the instants epoch + phase + k*interval. Each check has its
// own phase, so checks added at the same moment do not fire in lock-step,
// and the grid is anchored to due times, not to completions, so probe
// durations do not stretch the period. The next grid point is the first
// one strictly after prev, so the gap between two probes never exceeds
// interval. A check that fell behind (its probe took longer than the gap)
// is probed at once rather than in a burst.
func nextDue(prev, now, epoch, first time.Time, interval, phase time.Duration, starting bool) time.Time {
	var next time.Time
	if starting {
		next = prev.Add(startingGap(prev.Sub(first), interval))
	} else {
		off := prev.Sub(epoch) % interval
		if off < 0 {
			off += interval
		}
		d := (phase - off) % interval
		if d <= 0 {
			d += interval
		}
		next = prev.Add(d)
	}
	if next.Before(now) {
		return now
	}
	return next
}

// startingGap is the gap after a probe of a starting check made age
// after its first one.
func startingGap(age, interval time.Duration) time.Duration {
	return min(max(age/2, startingFirstGap), startingInterval, interval)
}

// phaseOf spreads checks over their interval: a stable offset in
// [0, interval) derived from the instance id and check name.
func phaseOf(instanceID, check string, interval time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(instanceID))
	h.Write([]byte{0})
	h.Write([]byte(check))
	return time.Duration(h.Sum64() % uint64(interval))
}

// entry is one item of the scheduler's queue: a probe of a job, or the
// end of a job's startup window.
type entry struct {
	due    time.Time
	job    *job
	expiry bool
	index  int // position in the queue, -1 when not queued
}

// queue is a min-heap of entries by due time, for container/heap.
type queue []*entry

func (q queue) Len() int           { return len(q) }
func (q queue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q queue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index = i
	q[j].index = j
}

func (q *queue) Push(x any) {
	e := x.(*entry)
	e.index = len(*q)
	*q = append(*q, e)
}

func (q *queue) Pop() any {
	old := *q
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	e.index = -1
	*q = old[:n-1]
	return e
}
