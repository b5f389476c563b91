package vmimage

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// xzMagic starts an xz stream (the payload of an xz-compressed bzImage).
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// ExtractVmlinux returns the uncompressed ELF kernel inside a bzImage
// compressed with xz (Debian's), the way the kernel tree's
// scripts/extract-vmlinux finds it: the first xz stream that decompresses
// to an ELF file. QEMU boots an ELF vmlinux through its PVH entry point,
// which skips the in-guest decompression that costs seconds under TCG.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	if _, err := exec.LookPath("xz"); err != nil {
		return nil, errors.New("vmimage: xz not found (Debian package xz-utils)")
	}
	for off := 0; ; {
		i := bytes.Index(bzImage[off:], xzMagic)
		if i < 0 {
			return nil, errors.New("vmimage: no xz-compressed ELF kernel in the bzImage (only xz kernels, as Debian builds them, are supported)")
		}
		off += i
		cmd := exec.Command("xz", "-dc", "--single-stream")
		cmd.Stdin = bytes.NewReader(bzImage[off:])
		out, err := cmd.Output()
		if err == nil && bytes.HasPrefix(out, []byte(elf.ELFMAG)) {
			return out, nil
		}
		off++
	}
}

// module is one kernel module file of a module tree.
type module struct {
	name    string // as modinfo names it: dashes are underscores
	path    string // relative to the tree
	depends []string
}

// ModuleOrder returns the files (relative to modRoot, the
// lib/modules/<version> directory) of the named modules and of all they
// depend on, dependencies first, as insmod must load them. It reads each
// module's "depends" from its .modinfo section, so it needs no
// modules.dep (Debian's package does not ship one; depmod makes it).
func ModuleOrder(modRoot string, names []string) ([]string, error) {
	index := map[string]string{}
	err := filepath.WalkDir(modRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(modRoot, p)
			index[modName(strings.TrimSuffix(d.Name(), ".ko"))] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("vmimage: module tree: %w", err)
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("vmimage: module %s depends on itself", name)
		case 2:
			return nil
		}
		rel, ok := index[name]
		if !ok {
			if from == "" {
				return fmt.Errorf("vmimage: module %s is not in %s", name, modRoot)
			}
			return fmt.Errorf("vmimage: module %s (needed by %s) is not in %s", name, from, modRoot)
		}
		state[name] = 1
		deps, err := moduleDepends(filepath.Join(modRoot, rel))
		if err != nil {
			return err
		}
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, rel)
		return nil
	}
	for _, n := range names {
		if err := visit(modName(n), ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func modName(n string) string { return strings.ReplaceAll(n, "-", "_") }

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vmimage: module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("vmimage: module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("vmimage: module %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, modName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// readFile is os.ReadFile with the path in the error.
func readFile(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("vmimage: %w", err)
	}
	return b, nil
}
