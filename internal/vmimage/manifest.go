// Package vmimage defines immutd's golden VM images and builds them.
//
// A VM image is a directory: manifest.json, an uncompressed ELF kernel
// (vmlinux), an initramfs (a newc cpio archive, uncompressed) and,
// optionally, a raw disk that every instance gets as its root disk
// through a copy-on-write overlay, read-only in spirit: any write the
// guest makes to it is drift. internal/provider/qemu imports and runs
// them, pinned by the sha256 digest of the manifest and the files it
// names.
//
// Build makes one from a local bundle (the sample app's, say), a Debian
// kernel package's files, busybox-static and cmd/vminit (the guest's
// init), reproducibly: the same inputs give the same bytes.
package vmimage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// ManifestName is the manifest's file name in an image directory.
const ManifestName = "manifest.json"

// Machines a manifest may ask for: QEMU's microvm (virtio-mmio devices,
// no PCI, no firmware; boots fastest) or the classic pc.
const (
	MachineMicrovm = "microvm"
	MachinePC      = "pc"
)

// Bounds of an image's parts, checked on import.
const (
	MaxKernelSize  = 256 << 20
	MaxInitrdSize  = 1 << 30
	MaxDiskSize    = 64 << 30
	MaxCmdlineLen  = 1024
	maxManifestLen = 64 << 10
)

// Manifest describes a VM image (manifest.json).
type Manifest struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Kernel, Initrd and Disk are file names in the image directory;
	// Disk is optional.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	Disk   string `json:"disk,omitempty"`
	// Machine is microvm (default) or pc.
	Machine string `json:"machine,omitempty"`
	// Cmdline is the kernel command line; the provider appends its own
	// settings (clock hints under TCG).
	Cmdline string `json:"cmdline,omitempty"`
	// GuestPort is the TCP port the app listens on inside the guest; the
	// provider forwards a host port to it. Default 8080.
	GuestPort int `json:"guest_port,omitempty"`
	// KernelRelease says which kernel the image boots (for people).
	KernelRelease string `json:"kernel_release,omitempty"`
}

var (
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
)

// ReadManifest reads and checks dir/manifest.json, and checks that the
// files it names are regular files within their bounds. It fills in the
// defaults (machine microvm, guest port 8080).
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	path := filepath.Join(dir, ManifestName)
	fi, err := os.Lstat(path)
	if err != nil {
		return m, fmt.Errorf("vm image %s: %w", dir, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxManifestLen {
		return m, fmt.Errorf("vm image %s: %s must be a regular file of at most %d bytes", dir, ManifestName, maxManifestLen)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return m, fmt.Errorf("vm image %s: %w", dir, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("vm image %s: %s: %w", dir, ManifestName, err)
	}
	if err := m.check(dir); err != nil {
		return m, fmt.Errorf("vm image %s: %s: %w", dir, ManifestName, err)
	}
	return m, nil
}

func (m *Manifest) check(dir string) error {
	var errs []error
	if !nameRE.MatchString(m.Name) {
		errs = append(errs, fmt.Errorf("name %q: want 1-128 characters of [A-Za-z0-9._+-]", m.Name))
	}
	if !nameRE.MatchString(m.Version) {
		errs = append(errs, fmt.Errorf("version %q: want 1-128 characters of [A-Za-z0-9._+-]", m.Version))
	}
	if m.Machine == "" {
		m.Machine = MachineMicrovm
	}
	if m.Machine != MachineMicrovm && m.Machine != MachinePC {
		errs = append(errs, fmt.Errorf("machine %q: want %q or %q", m.Machine, MachineMicrovm, MachinePC))
	}
	if m.GuestPort == 0 {
		m.GuestPort = 8080
	}
	if m.GuestPort < 1 || m.GuestPort > 65535 {
		errs = append(errs, fmt.Errorf("guest_port %d: want 1-65535", m.GuestPort))
	}
	if len(m.Cmdline) > MaxCmdlineLen {
		errs = append(errs, fmt.Errorf("cmdline is %d bytes, more than %d", len(m.Cmdline), MaxCmdlineLen))
	}
	for _, f := range []struct {
		field, name string
		max         int64
		required    bool
	}{{"kernel", m.Kernel, MaxKernelSize, true}, {"initrd", m.Initrd, MaxInitrdSize, true}, {"disk", m.Disk, MaxDiskSize, false}} {
		if f.name == "" {
			if f.required {
				errs = append(errs, fmt.Errorf("%s is required", f.field))
			}
			continue
		}
		if !fileNameRE.MatchString(f.name) || f.name == ManifestName {
			errs = append(errs, fmt.Errorf("%s %q: want a file name in the image directory (1-128 characters of [A-Za-z0-9._-], no slash)", f.field, f.name))
			continue
		}
		fi, err := os.Lstat(filepath.Join(dir, f.name))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", f.field, err))
		case !fi.Mode().IsRegular():
			errs = append(errs, fmt.Errorf("%s %s is not a regular file", f.field, f.name))
		case fi.Size() == 0 || fi.Size() > f.max:
			errs = append(errs, fmt.Errorf("%s %s is %d bytes; want 1 to %d", f.field, f.name, fi.Size(), f.max))
		}
	}
	if strings.Contains(m.Cmdline, "immutd.") {
		errs = append(errs, errors.New("cmdline must not set immutd.* parameters: the provider passes the launch through fw_cfg"))
	}
	return errors.Join(errs...)
}

// Files returns the files the manifest names, the manifest first.
func (m Manifest) Files() []string {
	out := []string{ManifestName, m.Kernel, m.Initrd}
	if m.Disk != "" {
		out = append(out, m.Disk)
	}
	return out
}
