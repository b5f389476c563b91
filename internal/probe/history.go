package probe

// History bounds: per instance, the last keepSuccesses successful and the
// last keepFailures failed results are kept. Failures are what explains a
// verdict, so they are kept longer.
const (
	keepSuccesses = 10
	keepFailures  = 50
)

// history is the recent results of one instance (all its checks). Its
// memory is bounded: two rings of fixed capacity, allocated on first use.
type history struct {
	seq  uint64
	succ ring
	fail ring
}

type histEntry struct {
	seq uint64
	r   Result
}

func (h *history) add(r Result) {
	h.seq++
	e := histEntry{seq: h.seq, r: r}
	if r.OK {
		h.succ.add(e, keepSuccesses)
	} else {
		h.fail.add(e, keepFailures)
	}
}

// results returns the kept results, newest first.
func (h *history) results() []Result {
	out := make([]Result, 0, h.succ.len()+h.fail.len())
	i, j := 0, 0
	for i < h.succ.len() || j < h.fail.len() {
		if j >= h.fail.len() || (i < h.succ.len() && h.succ.newest(i).seq > h.fail.newest(j).seq) {
			out = append(out, h.succ.newest(i).r)
			i++
		} else {
			out = append(out, h.fail.newest(j).r)
			j++
		}
	}
	return out
}

// ring keeps the last n entries added to it.
type ring struct {
	buf  []histEntry
	next int // slot the next entry overwrites once buf is full
}

func (r *ring) add(e histEntry, n int) {
	if r.buf == nil {
		r.buf = make([]histEntry, 0, n)
	}
	if len(r.buf) < n {
		r.buf = append(r.buf, e)
		return
	}
	r.buf[r.next] = e
	r.next = (r.next + 1) % n
}

func (r *ring) len() int { return len(r.buf) }

// newest returns the i-th newest entry (0 is the newest).
func (r *ring) newest(i int) histEntry {
	n := len(r.buf)
	if n < cap(r.buf) {
		return r.buf[n-1-i]
	}
	return r.buf[(r.next-1-i+2*n)%n]
}
