package vmimage

// The contract between the qemu provider and the guest's init
// (cmd/vminit): what a VM is told at launch, and where.

const (
	// FwCfgLaunch is the fw_cfg file that carries the launch
	// (-fw_cfg name=FwCfgLaunch,file=...); in the guest it is
	// /sys/firmware/qemu_fw_cfg/by_name/FwCfgLaunch/raw.
	FwCfgLaunch = "opt/immutd/launch.json"
	// MaxLaunch bounds the launch's JSON.
	MaxLaunch = 64 << 10
	// ShareTag is the virtio-9p mount tag of the instance's writable
	// share, and ShareMount where the guest mounts it.
	ShareTag   = "instance"
	ShareMount = "/mnt/instance"
)

// GuestLaunch is the launch a VM gets through fw_cfg.
type GuestLaunch struct {
	ID     string            `json:"id"`
	Fleet  string            `json:"fleet"`
	Digest string            `json:"image_digest"`
	Args   []string          `json:"args"`
	Env    map[string]string `json:"env"`
	// GuestPort is the port the app listens on (PORT in its environment).
	GuestPort int `json:"guest_port"`
	// Share says whether the VM has the writable share (ShareTag).
	Share bool `json:"share"`
}
