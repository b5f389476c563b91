package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// CommandType identifies a log entry. Types with the Ignorable bit set may
// be skipped by an older release that does not know them; any other
// unknown type stops the node rather than let its state diverge.
type CommandType uint8

// Ignorable marks a command type an older release may safely skip.
const Ignorable CommandType = 0x80

const (
	TypeSetDesired     CommandType = 1
	TypeCommitIntents  CommandType = 2
	TypeCompleteIntent CommandType = 3
	TypeClaimIntents   CommandType = 4
	TypeAdopt          CommandType = 5
	TypeMarkHealthy    CommandType = 6
	TypeDrainFleet     CommandType = 7
	TypeDrainRemoved   CommandType = 9
	TypePause          CommandType = 11
	TypeUnpause        CommandType = 12
	TypeQuarantine     CommandType = 13
	TypeRetryFleet     CommandType = 14
	TypeRolloutStep    CommandType = 16
	// Events are informational: an older node may skip them.
	TypeRecordEvents = Ignorable | 8
	// Storm and version bookkeeping are not ignorable although an older
	// release has no use for them: a node that skipped them would, once
	// upgraded, hold another state than its peers (no storm to cool down
	// from, no version to revert to). An older node stops at them instead,
	// saying to upgrade; upgrading the followers first and the leader last
	// means none ever sees one.
	TypeRecordStorms  CommandType = 10
	TypeRecordVersion CommandType = 15
)

// Command is a typed, versioned change to the state.
type Command interface {
	Type() CommandType
	// Version of the command's encoding. Decoders accept every version up
	// to the one they know.
	Version() uint8
}

// versioned is a command whose encoding version depends on its content:
// it writes the oldest version that can carry it, so a release that does
// not know what it carries refuses it (and stops) instead of applying it
// differently.
type versioned interface {
	encodedVersion() uint8
}

// Encode serialises a command as [type][version][json body].
func Encode(c Command) ([]byte, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("state: encode %T: %w", c, err)
	}
	v := c.Version()
	if vc, ok := c.(versioned); ok {
		v = vc.encodedVersion()
	}
	return append([]byte{byte(c.Type()), v}, body...), nil
}

// ErrUnknownIgnorable is returned by Decode for an unknown command type that
// carries the Ignorable flag.
var ErrUnknownIgnorable = errors.New("state: unknown ignorable command")

var registry = map[CommandType]Command{
	TypeSetDesired:     &SetDesired{},
	TypeCommitIntents:  &CommitIntents{},
	TypeCompleteIntent: &CompleteIntent{},
	TypeClaimIntents:   &ClaimIntents{},
	TypeAdopt:          &Adopt{},
	TypeMarkHealthy:    &MarkHealthy{},
	TypeDrainFleet:     &DrainFleet{},
	TypeDrainRemoved:   &DrainRemoved{},
	TypeRecordEvents:   &RecordEvents{},
	TypePause:          &AddPause{},
	TypeUnpause:        &Unpause{},
	TypeQuarantine:     &Quarantine{},
	TypeRetryFleet:     &RetryFleet{},
	TypeRecordVersion:  &RecordVersion{},
	TypeRolloutStep:    &RolloutStep{},
	TypeRecordStorms:   &RecordStorms{},
}

// Decode parses an encoded command.
func Decode(b []byte) (Command, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("state: decode: entry of %d bytes is too short", len(b))
	}
	t, v := CommandType(b[0]), b[1]
	proto, ok := registry[t]
	if !ok {
		if t&Ignorable != 0 {
			return nil, ErrUnknownIgnorable
		}
		return nil, fmt.Errorf("state: decode: unknown command type %d (upgrade this node)", t)
	}
	c := reflect.New(reflect.TypeOf(proto).Elem()).Interface().(Command)
	if v > c.Version() {
		return nil, fmt.Errorf("state: decode: command type %d version %d is newer than %d (upgrade this node)", t, v, c.Version())
	}
	if err := json.Unmarshal(b[2:], c); err != nil {
		return nil, fmt.Errorf("state: decode command type %d: %w", t, err)
	}
	return c, nil
}

// SetDesired commits a new desired generation: the complete set of
// configured fleets. Fleets in the state but not in Fleets become
// unconfigured (never torn down silently).
type SetDesired struct {
	// BaseGeneration must equal the current generation; otherwise the
	// command is rejected and the proposer re-reads and retries.
	BaseGeneration uint64          `json:"base_generation"`
	SourceHash     string          `json:"source_hash"`
	Fleets         []*DesiredFleet `json:"fleets"`
	// AutoDrain drains fleets that became unconfigured.
	AutoDrain bool      `json:"auto_drain"`
	At        time.Time `json:"at"`
	Node      string    `json:"node"`
	// ProposerID is the id of the node whose fleet files these are; empty
	// when the leader only re-pins images of the committed specs.
	ProposerID string `json:"proposer_id,omitempty"`
}

// CommitIntents journals the intents of one plan. The whole batch is
// rejected when the desired generation moved since the plan was made;
// single intents are rejected when they conflict with open intents or
// records.
type CommitIntents struct {
	Generation uint64    `json:"generation"`
	Intents    []*Intent `json:"intents"`
	At         time.Time `json:"at"`
}

// Outcome of a finished intent.
type Outcome string

const (
	Done      Outcome = "done"
	Failed    Outcome = "failed"
	Abandoned Outcome = "abandoned"
)

// CompleteIntent closes an intent with the provider's answer.
type CompleteIntent struct {
	OpID    string  `json:"op_id"`
	Term    uint64  `json:"term"`
	Outcome Outcome `json:"outcome"`
	Error   string  `json:"error,omitempty"`
	// Observed is the launched instance (launch, Done).
	Observed *instance.Observed `json:"observed,omitempty"`
	At       time.Time          `json:"at"`
	Node     string             `json:"node"`
}

// ClaimIntents moves open intents to a new leader's term before it
// re-drives them, so a deposed leader cannot complete them any more.
type ClaimIntents struct {
	OpIDs []string  `json:"op_ids"`
	Term  uint64    `json:"term"`
	At    time.Time `json:"at"`
	Node  string    `json:"node"`
}

// Adopt records running instances that no record explained.
type Adopt struct {
	Instances []*Instance `json:"instances"`
	At        time.Time   `json:"at"`
	Node      string      `json:"node"`
}

// MarkHealthy records that instances were judged healthy once.
type MarkHealthy struct {
	InstanceIDs []string  `json:"instance_ids"`
	At          time.Time `json:"at"`
}

// DrainFleet starts draining an unconfigured fleet (operator confirmed).
type DrainFleet struct {
	Fleet string    `json:"fleet"`
	At    time.Time `json:"at"`
	Node  string    `json:"node"`
}

// DrainRemoved records that every traffic backend confirmed a drain
// intent's instance gets no new traffic. The first one counts: a later
// leader re-driving the drain keeps the time, so drain_delay is waited
// once.
type DrainRemoved struct {
	OpID string    `json:"op_id"`
	Term uint64    `json:"term"`
	At   time.Time `json:"at"`
	Node string    `json:"node"`
}

// AddPause adds an operator's pause (see Pause). The state names it.
type AddPause struct {
	Fleet  string        `json:"fleet,omitempty"`
	Reason string        `json:"reason"`
	For    time.Duration `json:"for,omitempty"`
	By     string        `json:"by,omitempty"`
	At     time.Time     `json:"at"`
	Node   string        `json:"node"`
}

// Unpause removes pauses: the one named, or with All every one of the
// fleet (every pause at all when Fleet is empty too).
type Unpause struct {
	ID    string    `json:"id,omitempty"`
	All   bool      `json:"all,omitempty"`
	Fleet string    `json:"fleet,omitempty"`
	By    string    `json:"by,omitempty"`
	At    time.Time `json:"at"`
	Node  string    `json:"node"`
}

// Quarantine marks instances quarantined instead of killed (see
// Instance.Quarantined). An admitted instance is drained first, so one
// is refused, as is an instance with an intent open, beyond the fleet's
// quota, or in a fleet without a quarantine.
type Quarantine struct {
	Entries []QuarantineEntry `json:"entries"`
	At      time.Time         `json:"at"`
	Node    string            `json:"node"`
}

// RetryFleet clears a fleet's launch failures (an operator's request
// after fixing what made its instances fail): the launch backoff and its
// cap start afresh.
type RetryFleet struct {
	Fleet string    `json:"fleet"`
	By    string    `json:"by,omitempty"`
	At    time.Time `json:"at"`
	Node  string    `json:"node"`
}

// RecordVersion records that a fleet's pinned image and launch template
// are a new version (see DesiredFleet.Versions) and starts its rollout.
// The leader journals it whenever the fleet's target differs from its
// newest version, so a crash between a SetDesired and it, or an upgrade
// from a release without versions, is made up for by the next pass; a
// stale one (the fleet moved on since) changes nothing.
type RecordVersion struct {
	Fleet        string    `json:"fleet"`
	ImageDigest  string    `json:"image_digest"`
	TemplateHash string    `json:"template_hash"`
	At           time.Time `json:"at"`
	Node         string    `json:"node"`
}

// QuarantineEntry is one instance to quarantine and why.
type QuarantineEntry struct {
	Fleet      string   `json:"fleet"`
	InstanceID string   `json:"instance_id"`
	Reason     string   `json:"reason"`
	Evidence   []string `json:"evidence,omitempty"`
}

// RecordStorms records storms beginning and ending, per fleet and for
// the whole cluster, so that their cooldowns survive a change of leader.
type RecordStorms struct {
	// Fleets maps a fleet to whether a storm is active in it now.
	Fleets map[string]bool `json:"fleets,omitempty"`
	// Cluster is set when the cluster-wide storm state changes.
	Cluster *bool     `json:"cluster,omitempty"`
	At      time.Time `json:"at"`
	Node    string    `json:"node"`
}

// RecordEvents appends informational events.
type RecordEvents struct {
	Events []Event `json:"events"`
}

func (*SetDesired) Type() CommandType     { return TypeSetDesired }
func (*CommitIntents) Type() CommandType  { return TypeCommitIntents }
func (*CompleteIntent) Type() CommandType { return TypeCompleteIntent }
func (*ClaimIntents) Type() CommandType   { return TypeClaimIntents }
func (*Adopt) Type() CommandType          { return TypeAdopt }
func (*MarkHealthy) Type() CommandType    { return TypeMarkHealthy }
func (*DrainFleet) Type() CommandType     { return TypeDrainFleet }
func (*DrainRemoved) Type() CommandType   { return TypeDrainRemoved }
func (*RecordEvents) Type() CommandType   { return TypeRecordEvents }
func (*AddPause) Type() CommandType       { return TypePause }
func (*Unpause) Type() CommandType        { return TypeUnpause }
func (*Quarantine) Type() CommandType     { return TypeQuarantine }
func (*RetryFleet) Type() CommandType     { return TypeRetryFleet }
func (*RecordVersion) Type() CommandType  { return TypeRecordVersion }
func (*RecordStorms) Type() CommandType   { return TypeRecordStorms }

// SetDesired is at version 3 and CommitIntents at version 2: a version-2
// entry carries what version 1 cannot (a fleet with traffic backends, a
// drain intent, an admit intent), a version-3 SetDesired a fleet with
// kill-rate or storm settings. Entries without them are still written
// at the older version.
func (*SetDesired) Version() uint8     { return 3 }
func (*CommitIntents) Version() uint8  { return 2 }
func (*CompleteIntent) Version() uint8 { return 1 }
func (*ClaimIntents) Version() uint8   { return 1 }
func (*Adopt) Version() uint8          { return 1 }
func (*MarkHealthy) Version() uint8    { return 1 }
func (*DrainFleet) Version() uint8     { return 1 }
func (*DrainRemoved) Version() uint8   { return 1 }
func (*RecordEvents) Version() uint8   { return 1 }
func (*AddPause) Version() uint8       { return 1 }
func (*Unpause) Version() uint8        { return 1 }
func (*Quarantine) Version() uint8     { return 1 }
func (*RetryFleet) Version() uint8     { return 1 }
func (*RecordVersion) Version() uint8  { return 1 }
func (*RecordStorms) Version() uint8   { return 1 }

func (c *SetDesired) encodedVersion() uint8 {
	v := uint8(1)
	for _, f := range c.Fleets {
		if f == nil {
			continue
		}
		if f.Spec.Remediation.Guarded() || f.Spec.Rollout.Set() {
			return 3
		}
		if f.Spec.Traffic != nil {
			v = 2
		}
		for _, ck := range f.Spec.Health.Checks {
			if ck.Consul != nil {
				v = 2
			}
		}
	}
	return v
}

func (c *CommitIntents) encodedVersion() uint8 {
	for _, it := range c.Intents {
		if it != nil && (it.Kind == Drain || it.Kind == Admit) {
			return 2
		}
	}
	return 1
}
