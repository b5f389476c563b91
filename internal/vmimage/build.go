package vmimage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are the kernel modules an image loads at boot: virtio
// over MMIO (microvm) and PCI (pc), its network, block and 9p devices,
// fw_cfg (the launch), and the ACPI power button with evdev (a graceful
// stop).
var DefaultModules = []string{"virtio_mmio", "virtio_pci", "virtio_net", "virtio_blk", "9pnet_virtio", "9p",
	"qemu_fw_cfg", "button", "evdev"}

// DefaultCmdline is the kernel command line of built images: the serial
// console, no reboot on panic (QEMU runs with -no-reboot, so a panic ends
// the VM), and what keeps a boot under TCG short and reliable.
const DefaultCmdline = "console=ttyS0 quiet panic=1 tsc=reliable no_timer_check cryptomgr.notests mitigations=off"

// Options is what Build makes an image from.
type Options struct {
	// KernelDir is the root of a Debian linux-image package's files
	// (dpkg-deb -x): boot/vmlinuz-<release> and lib/modules/<release>/.
	KernelDir string
	// Busybox is a static busybox binary (Debian's busybox-static).
	Busybox string
	// Init is the guest init, a static cmd/vminit binary.
	Init string
	// Bundle is a local provider bundle (manifest.json with name,
	// version and entrypoint, and its files): the app, put at /app.
	Bundle string
	// Modules are the kernel modules to load; default DefaultModules.
	Modules []string
	// DiskSize, when not 0, adds a root disk of that many bytes (zeros).
	DiskSize int64
	// Out is the image directory to write; it must not exist.
	Out string
}

// bundleManifest is the local provider's bundle manifest.
type bundleManifest struct {
	Name       string   `json:"name"`
	Version    string   `json:"version"`
	Entrypoint []string `json:"entrypoint"`
}

// Build writes a VM image to opts.Out.
func Build(opts Options) (Manifest, error) {
	var m Manifest
	if opts.KernelDir == "" || opts.Busybox == "" || opts.Init == "" || opts.Bundle == "" || opts.Out == "" {
		return m, errors.New("vmimage: KernelDir, Busybox, Init, Bundle and Out are required")
	}
	release, vmlinuz, err := findKernel(opts.KernelDir)
	if err != nil {
		return m, err
	}
	bz, err := readFile(vmlinuz)
	if err != nil {
		return m, err
	}
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		return m, err
	}
	a := archive{}
	modRoot := filepath.Join(opts.KernelDir, "lib", "modules", release)
	names := opts.Modules
	if names == nil {
		names = DefaultModules
	}
	mods, err := ModuleOrder(modRoot, names)
	if err != nil {
		return m, err
	}
	var list bytes.Buffer
	for _, rel := range mods {
		b, err := readFile(filepath.Join(modRoot, rel))
		if err != nil {
			return m, err
		}
		p := path.Join("lib/modules", release, filepath.ToSlash(rel))
		a.file(p, 0o644, b)
		fmt.Fprintf(&list, "/%s\n", p)
	}
	a.file("etc/immutd/modules", 0o644, list.Bytes())
	for _, f := range []struct{ src, dst string }{{opts.Init, "init"}, {opts.Busybox, "bin/busybox"}} {
		b, err := readFile(f.src)
		if err != nil {
			return m, err
		}
		a.file(f.dst, 0o755, b)
	}
	a.symlink("bin/sh", "busybox")
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "mnt/instance", "var/log"} {
		a.dir(d)
	}
	bm, err := addBundle(a, opts.Bundle)
	if err != nil {
		return m, err
	}
	app, _ := json.MarshalIndent(struct {
		Command []string `json:"command"`
		Dir     string   `json:"dir"`
	}{bm.Entrypoint, "/app"}, "", "  ")
	a.file("etc/immutd/app.json", 0o644, append(app, '\n'))

	m = Manifest{Name: bm.Name, Version: bm.Version, Kernel: "vmlinux", Initrd: "initrd.cpio",
		Machine: MachineMicrovm, Cmdline: DefaultCmdline, GuestPort: 8080, KernelRelease: release}
	if opts.DiskSize > 0 {
		m.Disk = "disk.raw"
	}
	return m, writeImage(opts, m, vmlinux, a)
}

func writeImage(opts Options, m Manifest, vmlinux []byte, a archive) error {
	if err := os.Mkdir(opts.Out, 0o755); err != nil {
		return fmt.Errorf("vmimage: %w", err)
	}
	var initrd bytes.Buffer
	if err := a.write(&initrd); err != nil {
		return err
	}
	man, _ := json.MarshalIndent(m, "", "  ")
	files := map[string][]byte{ManifestName: append(man, '\n'), m.Kernel: vmlinux, m.Initrd: initrd.Bytes()}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(opts.Out, name), b, 0o644); err != nil {
			return fmt.Errorf("vmimage: %w", err)
		}
	}
	if m.Disk != "" {
		f, err := os.Create(filepath.Join(opts.Out, m.Disk))
		if err != nil {
			return fmt.Errorf("vmimage: %w", err)
		}
		err = f.Truncate(opts.DiskSize)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("vmimage: disk: %w", err)
		}
	}
	_, err := ReadManifest(opts.Out)
	return err
}

// findKernel finds the one boot/vmlinuz-<release> of a kernel package.
func findKernel(dir string) (release, vmlinuz string, err error) {
	found, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(found) != 1 {
		return "", "", fmt.Errorf("vmimage: want exactly one boot/vmlinuz-* in %s, found %d", dir, len(found))
	}
	return strings.TrimPrefix(filepath.Base(found[0]), "vmlinuz-"), found[0], nil
}

// addBundle puts the local bundle's files at /app and returns its manifest.
func addBundle(a archive, dir string) (bundleManifest, error) {
	var bm bundleManifest
	b, err := readFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return bm, err
	}
	if err := json.Unmarshal(b, &bm); err != nil {
		return bm, fmt.Errorf("vmimage: bundle %s: manifest.json: %w", dir, err)
	}
	if bm.Name == "" || bm.Version == "" || len(bm.Entrypoint) == 0 {
		return bm, fmt.Errorf("vmimage: bundle %s: manifest.json needs name, version and entrypoint", dir)
	}
	var paths []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return bm, fmt.Errorf("vmimage: bundle: %w", err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		dst := path.Join("app", filepath.ToSlash(rel))
		fi, err := os.Lstat(p)
		if err != nil {
			return bm, fmt.Errorf("vmimage: bundle: %w", err)
		}
		switch {
		case fi.IsDir():
			a.dir(dst)
		case fi.Mode().IsRegular():
			b, err := readFile(p)
			if err != nil {
				return bm, err
			}
			perm := uint32(0o644)
			if fi.Mode()&0o111 != 0 {
				perm = 0o755
			}
			a.file(dst, perm, b)
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return bm, fmt.Errorf("vmimage: bundle: %w", err)
			}
			a.symlink(dst, t)
		default:
			return bm, fmt.Errorf("vmimage: bundle: %s is not a file, directory or symlink", p)
		}
	}
	return bm, nil
}
