package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// meta is what the provider records about one instance, in
// meta/<id>.json, outside the instance root.
type meta struct {
	ID           string `json:"id"`
	Fleet        string `json:"fleet"`
	ImageDigest  string `json:"image_digest"`
	TemplateHash string `json:"template_hash"`
	// PID is 0 until the process has been started and recorded.
	PID int `json:"pid"`
	// StartTicks is field 22 of /proc/<pid>/stat; with PID it names the
	// process unambiguously despite pid reuse.
	StartTicks uint64    `json:"start_ticks"`
	Port       int       `json:"port"`
	Address    string    `json:"address"`
	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	// Command is the argv as launched; Executable is argv[0] resolved.
	Command    []string `json:"command,omitempty"`
	Executable string   `json:"executable,omitempty"`
	// ExitReason and ExitedAt are recorded when this provider reaped the
	// process ("exit status 1", "signal: killed").
	ExitReason string    `json:"exit_reason,omitempty"`
	ExitedAt   time.Time `json:"exited_at,omitzero"`
}

func (p *Provider) readMeta(id string) (*meta, error) {
	b, err := os.ReadFile(p.metaPath(id))
	if err != nil {
		return nil, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode %s: %w", p.metaPath(id), err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("%s: records instance %q, not %q", p.metaPath(id), m.ID, id)
	}
	if m.PID < 0 {
		return nil, fmt.Errorf("%s: negative pid %d", p.metaPath(id), m.PID)
	}
	return &m, nil
}

func (p *Provider) writeMeta(m *meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.metaPath(m.ID), append(b, '\n'))
}

// Exit reasons reported when no exit status was recorded.
const (
	reasonGone        = "process gone"
	reasonPIDReused   = "process gone (pid reused)"
	reasonZombie      = "process exited"
	reasonNeverLaunch = "launch interrupted before the process was recorded"
)

// observe reports an instance from its metadata and /proc. It fails only
// when /proc itself cannot be read, so a caller never mistakes an
// unknown state for an exit.
func (p *Provider) observe(m *meta) (instance.Observed, error) {
	obs := instance.Observed{
		ID:           m.ID,
		Fleet:        m.Fleet,
		ImageDigest:  m.ImageDigest,
		TemplateHash: m.TemplateHash,
		Phase:        instance.Exited,
		Address:      m.Address,
		StartedAt:    m.StartedAt,
		Location:     p.instanceRoot(m.ID),
	}
	if obs.StartedAt.IsZero() {
		obs.StartedAt = m.CreatedAt
	}
	if m.PID == 0 {
		obs.ExitReason = reasonNeverLaunch
		return obs, nil
	}
	obs.ProviderRef = strconv.Itoa(m.PID)
	st, err := readProcStat(p.procRoot, m.PID)
	switch {
	case errors.Is(err, errNoProcess):
		obs.ExitReason = orDefault(m.ExitReason, reasonGone)
	case err != nil:
		return instance.Observed{}, fmt.Errorf("instance %s: %w", m.ID, err)
	case st.StartTicks != m.StartTicks:
		obs.ExitReason = orDefault(m.ExitReason, reasonPIDReused)
	case !st.live():
		obs.ExitReason = orDefault(m.ExitReason, reasonZombie)
	default:
		obs.Phase = instance.Running
	}
	return obs, nil
}

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// unreadableObserved reports an instance whose metadata cannot be read.
func (p *Provider) unreadableObserved(id string, err error) instance.Observed {
	return instance.Observed{
		ID:         id,
		Phase:      instance.Exited,
		ExitReason: "unreadable metadata: " + err.Error(),
		Location:   p.instanceRoot(id),
	}
}

// recoverPID looks for the process of an instance whose launch was
// interrupted after the start but before the pid was written, and
// records it. The caller holds the instance lock.
func (p *Provider) recoverPID(m *meta) {
	if m.PID != 0 || m.ExitReason != "" {
		return
	}
	st, ok := findSessionLeaderIn(p.procRoot, p.instanceRoot(m.ID))
	if !ok {
		return
	}
	m.PID, m.StartTicks = st.PID, st.StartTicks
	if err := p.writeMeta(m); err != nil {
		p.log.Warn("record recovered pid failed", zapID(m.ID), zapPID(st.PID), zapErr(err))
	}
	p.log.Info("recovered process of interrupted launch", zapID(m.ID), zapPID(st.PID))
}
