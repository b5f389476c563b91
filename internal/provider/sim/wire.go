package sim

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// What the provider and the host processes share: the control API's
// paths, the record of one instance, and how hosts are addressed.

// Bounds and defaults of a host.
const (
	// DefaultHostCapacity is how many instances one host serves. Each
	// costs a listening socket and, while a prober keeps one, an accepted
	// connection: 2 x 5,000 descriptors fit the 20,000 open-file limit.
	DefaultHostCapacity = 5000
	// MaxHostCapacity bounds it: the ports of one host are
	// basePort..basePort+capacity-1, all below the ephemeral range.
	MaxHostCapacity = 12000
	// MaxHosts bounds the host processes of one directory: host k
	// serves on 127.X.k.1 (see hostIP).
	MaxHosts = 250
	// basePort is the first instance port of every host. Instance ports
	// stay below 32768, out of the ephemeral range, so that the
	// listeners never take a port an outgoing connection needs.
	basePort = 20000
	// maxControlBody bounds a control request's body.
	maxControlBody = 64 << 10
	// maxMutations and maxMutationLen bound the simulated in-place
	// changes of one instance.
	maxMutations   = 100
	maxMutationLen = 512
	// maxTemplateHashLen bounds a template hash.
	maxTemplateHashLen = 128
)

// hostIP is the loopback address host k of directory dir serves its
// instances on: 127.<100 + a hash of dir mod 100>.<k>.1. Every 127.x.y.z
// is local on Linux; 127.100-199.x.x keeps clear of 127.0.0.1, where
// other programs (the agent's own API) listen, and the hash keeps the
// hosts of two directories (two benchmarks, parallel tests) apart, most
// of the time: a port taken all the same is skipped.
func hostIP(dir string, k int) netip.Addr {
	h := fnv.New32a()
	_, _ = h.Write([]byte(dir))
	return netip.AddrFrom4([4]byte{127, byte(100 + h.Sum32()%100), byte(k), 1})
}

var (
	fleetRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)
	digestRE   = regexp.MustCompile(`^sha256:([0-9a-f]{64})$`)
	templateRE = regexp.MustCompile(`^[A-Za-z0-9._:+=-]{1,128}$`)
)

// createRequest is the body of PUT /v1/instances/{id}.
type createRequest struct {
	Fleet        string `json:"fleet"`
	ImageDigest  string `json:"image_digest"`
	TemplateHash string `json:"template_hash"`
	// Stubborn instances ignore a stop: a terminate waits out its grace.
	Stubborn bool `json:"stubborn,omitempty"`
	// ExitAfter, when positive, makes the instance exit by itself that
	// long after it started (the image's exit_after).
	ExitAfter time.Duration `json:"exit_after,omitempty"`
}

func (r createRequest) check() error {
	switch {
	case !fleetRE.MatchString(r.Fleet):
		return fmt.Errorf("fleet %q: want 1-40 characters of [a-z0-9-], not starting or ending with '-'", r.Fleet)
	case !digestRE.MatchString(r.ImageDigest):
		return fmt.Errorf("image digest %q: want sha256:<64 hex digits>", r.ImageDigest)
	case !templateRE.MatchString(r.TemplateHash):
		return fmt.Errorf("template hash %q: want 1-%d characters of [A-Za-z0-9._:+=-]", r.TemplateHash, maxTemplateHashLen)
	case r.ExitAfter < 0:
		return errors.New("exit_after must not be negative")
	}
	return nil
}

// record is one instance as a host reports it.
type record struct {
	ID           string    `json:"id"`
	Fleet        string    `json:"fleet"`
	ImageDigest  string    `json:"image_digest"`
	TemplateHash string    `json:"template_hash"`
	Address      string    `json:"address"`
	StartedAt    time.Time `json:"started_at"`
	Exited       bool      `json:"exited"`
	ExitReason   string    `json:"exit_reason,omitempty"`
	Failing      bool      `json:"failing"`
	Stubborn     bool      `json:"stubborn,omitempty"`
	// Mutations are the simulated in-place changes (paths added), only
	// in GET /v1/instances/{id}.
	Mutations []string `json:"mutations,omitempty"`
	// Changed, in the list only, says that Mutations is not empty.
	Changed bool `json:"-"`
}

// hostStats is GET /v1/stats.
type hostStats struct {
	Index    int `json:"index"`
	PID      int `json:"pid"`
	Capacity int `json:"capacity"`
	Count    int `json:"count"`
	Conns    int `json:"conns"`
	MaxConns int `json:"max_conns"`
}

// hostConfig is POST /v1/config: the settings the newest provider over
// the directory gave.
type hostConfig struct {
	HealthFlipRate float64 `json:"health_flip_rate"`
	Seed           uint64  `json:"seed"`
}

// The list (GET /v1/instances) is one line per instance, tab-separated,
// so that 100,000 instances decode in milliseconds:
// id fleet digest template address started(unix ns) phase health stubborn
// changed reason. changed is 1 when the instance has simulated in-place
// changes (their paths are in GET /v1/instances/{id}).
const listFields = 11

// appendLine appends r's list line.
func appendLine(b []byte, r *record) []byte {
	b = append(b, r.ID...)
	b = append(b, '\t')
	b = append(b, r.Fleet...)
	b = append(b, '\t')
	b = append(b, r.ImageDigest...)
	b = append(b, '\t')
	b = append(b, r.TemplateHash...)
	b = append(b, '\t')
	b = append(b, r.Address...)
	b = append(b, '\t')
	b = strconv.AppendInt(b, r.StartedAt.UnixNano(), 10)
	if r.Exited {
		b = append(b, "\texited"...)
	} else {
		b = append(b, "\trunning"...)
	}
	if r.Failing {
		b = append(b, "\tfailing"...)
	} else {
		b = append(b, "\thealthy"...)
	}
	if r.Stubborn {
		b = append(b, "\t1"...)
	} else {
		b = append(b, "\t0"...)
	}
	if len(r.Mutations) > 0 {
		b = append(b, "\t1\t"...)
	} else {
		b = append(b, "\t0\t"...)
	}
	b = append(b, cleanReason(r.ExitReason)...)
	return append(b, '\n')
}

// cleanReason keeps a reason on its line.
func cleanReason(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// parseList decodes a list; each record's strings share body's memory.
func parseList(body string) ([]record, error) {
	out := make([]record, 0, strings.Count(body, "\n"))
	var f [listFields]string
	for n := 1; body != ""; n++ {
		line, rest, ok := strings.Cut(body, "\n")
		if !ok {
			return nil, fmt.Errorf("list line %d is cut short", n)
		}
		body = rest
		for i := range listFields - 1 {
			v, r, ok := strings.Cut(line, "\t")
			if !ok {
				return nil, fmt.Errorf("list line %d has %d fields, want %d", n, i+1, listFields)
			}
			f[i], line = v, r
		}
		f[listFields-1] = line
		ns, err := strconv.ParseInt(f[5], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("list line %d: started: %v", n, err)
		}
		out = append(out, record{ID: f[0], Fleet: f[1], ImageDigest: f[2], TemplateHash: f[3], Address: f[4],
			StartedAt: time.Unix(0, ns), Exited: f[6] == "exited", Failing: f[7] == "failing", Stubborn: f[8] == "1",
			Changed: f[9] == "1", ExitReason: f[10]})
	}
	return out, nil
}
