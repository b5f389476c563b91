package instance

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Launch is a fleet's launch template: how an instance is started from
// the image. It is replicated (part of the desired state in raft) and
// hashed (TemplateHash), so its JSON encoding is part of immutd's on-disk
// and on-wire format. Rules for changing it:
//
//   - never rename or remove a field or change its type;
//   - a new field must be omitted from the encoding when it has its zero
//     value (omitempty or omitzero), and its zero value must mean what
//     instances launched before the field existed do. Then an upgrade
//     decodes old state unchanged and computes the same TemplateHash for
//     every existing fleet, so nothing rolls.
//
// internal/state/testdata/release-dbf9177 pins both.
type Launch struct {
	// Command replaces the image's entrypoint when set.
	Command []string `json:"command,omitempty"`
	// Args are appended to the entrypoint (or Command).
	Args []string `json:"args,omitempty"`
	// Env is extra environment for the instance.
	Env map[string]string `json:"env,omitempty"`
	// StopGrace is how long terminate waits after SIGTERM before SIGKILL.
	StopGrace time.Duration `json:"stop_grace"`
	// Docker holds docker-only launch settings; nil for other providers.
	Docker *DockerLaunch `json:"docker,omitempty"`
	// QEMU holds the qemu provider's launch settings; nil for other providers.
	QEMU *QEMULaunch `json:"qemu,omitempty"`
}

// QEMULaunch is the qemu provider's part of a launch template. Zero
// fields mean the provider's defaults.
type QEMULaunch struct {
	// MemoryBytes is the VM's memory.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// CPUs is the VM's virtual CPUs.
	CPUs int `json:"cpus,omitempty"`
}

// DockerLaunch is the docker provider's part of a launch template. Its
// fields predate the rules above and are always encoded; new ones follow
// the rules.
type DockerLaunch struct {
	// Port is the container port the app listens on.
	Port int `json:"port"`
	// NetworkMode is "bridge" or "host".
	NetworkMode string `json:"network_mode"`
	// ReadOnly mounts the container's root filesystem read-only.
	ReadOnly bool `json:"read_only"`
	// MemoryBytes limits memory; 0 = no limit.
	MemoryBytes int64 `json:"memory_bytes"`
	// NanoCPUs limits CPU; 0 = no limit.
	NanoCPUs int64 `json:"nano_cpus"`
}

// TemplateHash is the hash of everything that shapes a launched instance
// apart from the image: the provider and the launch template. An instance
// whose recorded template hash differs from its fleet's is drifted
// ("template") and is rolled.
//
// It is the first 8 bytes, in hex, of sha256 over the JSON of
// {"provider": ..., "launch": ...}; encoding/json sorts map keys, so the
// encoding is canonical. Every field of Launch takes part, so a field
// added by the rules on Launch changes the hash only of fleets that set it.
func TemplateHash(provider string, l Launch) string {
	b, err := json.Marshal(struct {
		Provider string `json:"provider"`
		Launch   Launch `json:"launch"`
	}{provider, l})
	if err != nil {
		panic(fmt.Sprintf("instance: hash launch template: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
