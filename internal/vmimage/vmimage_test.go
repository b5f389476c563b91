package vmimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// readNewc parses a newc archive: path -> (mode, data), in order.
func readNewc(t *testing.T, b []byte) ([]string, map[string]cpioFile) {
	t.Helper()
	var names []string
	files := map[string]cpioFile{}
	for off := 0; ; {
		if len(b)-off < 110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		if field(2) != 0 || field(3) != 0 || field(5) != 0 {
			t.Fatalf("entry at %d has an owner or a time", off)
		}
		name := string(b[off+110 : off+110+namesize-1])
		off = align4(off + 110 + namesize)
		data := b[off : off+size]
		off = align4(off + size)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return names, files
		}
		names = append(names, name)
		files[name] = cpioFile{Mode: uint32(mode), Data: data}
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

func TestArchiveIsNewcWithParentsAndReproducible(t *testing.T) {
	a := archive{}
	a.file("bin/app", 0o755, []byte("#!/bin/sh\n"))
	a.file("etc/immutd/app.json", 0o644, []byte("{}"))
	a.symlink("bin/sh", "busybox")
	a.dir("proc")
	var one, two bytes.Buffer
	if err := a.write(&one); err != nil {
		t.Fatal(err)
	}
	if err := a.write(&two); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Fatal("two writes of one archive differ")
	}
	names, files := readNewc(t, one.Bytes())
	want := []string{"bin", "bin/app", "bin/sh", "etc", "etc/immutd", "etc/immutd/app.json", "proc"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("entries %v, want %v (parents first, sorted)", names, want)
	}
	if f := files["bin/app"]; f.Mode != modeFile|0o755 || string(f.Data) != "#!/bin/sh\n" {
		t.Errorf("bin/app: mode %o data %q", f.Mode, f.Data)
	}
	if f := files["bin/sh"]; f.Mode != modeSymlink|0o777 || string(f.Data) != "busybox" {
		t.Errorf("bin/sh: mode %o target %q", f.Mode, f.Data)
	}
	if f := files["etc/immutd"]; f.Mode != modeDir|0o755 {
		t.Errorf("etc/immutd: mode %o, want a directory", f.Mode)
	}
	bad := archive{}
	bad.file("../escape", 0o644, nil)
	if err := bad.write(&bytes.Buffer{}); err == nil {
		t.Error("an archive with a path out of the root was written")
	}
}

func writeImageFiles(t *testing.T, man map[string]any, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	b, _ := json.Marshal(man)
	if err := os.WriteFile(filepath.Join(dir, ManifestName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestReadManifestChecksEveryField(t *testing.T) {
	good := map[string]any{"name": "app", "version": "1.0.0", "kernel": "vmlinux", "initrd": "initrd.cpio"}
	dir := writeImageFiles(t, good, map[string]string{"vmlinux": "k", "initrd.cpio": "i"})
	m, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Machine != MachineMicrovm || m.GuestPort != 8080 {
		t.Errorf("defaults: machine %q guest_port %d, want microvm 8080", m.Machine, m.GuestPort)
	}
	for _, c := range []struct {
		name  string
		set   map[string]any
		files map[string]string
		want  string
	}{
		{"missing kernel file", nil, map[string]string{"initrd.cpio": "i"}, "kernel: "},
		{"path in kernel", map[string]any{"kernel": "../vmlinux"}, nil, `kernel "../vmlinux": want a file name`},
		{"empty initrd", nil, map[string]string{"vmlinux": "k", "initrd.cpio": ""}, "initrd initrd.cpio is 0 bytes"},
		{"bad machine", map[string]any{"machine": "q35"}, nil, `machine "q35"`},
		{"bad port", map[string]any{"guest_port": 70000}, nil, "guest_port 70000"},
		{"long cmdline", map[string]any{"cmdline": strings.Repeat("x", MaxCmdlineLen+1)}, nil, "cmdline is 1025 bytes"},
		{"immutd in cmdline", map[string]any{"cmdline": "quiet immutd.id=x"}, nil, "must not set immutd.*"},
		{"bad name", map[string]any{"name": "a b"}, nil, `name "a b"`},
		{"missing disk", map[string]any{"disk": "disk.raw"}, nil, "disk: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			man := map[string]any{}
			for k, v := range good {
				man[k] = v
			}
			for k, v := range c.set {
				man[k] = v
			}
			files := c.files
			if files == nil {
				files = map[string]string{"vmlinux": "k", "initrd.cpio": "i"}
			}
			_, err := ReadManifest(writeImageFiles(t, man, files))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want one containing %q", err, c.want)
			}
		})
	}
}

// TestBuildIsReproducible builds the sample app's image twice from the
// kernel `make vm-images` unpacks, and checks the two are byte for byte
// the same, boot an ELF kernel, and load modules dependencies first.
func TestBuildIsReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the kernel package make vm-images unpacks")
	}
	root, _ := filepath.Abs("../..")
	kernel := filepath.Join(root, "build/vm/kernel")
	for _, p := range []string{kernel, filepath.Join(root, "bin/vminit"), filepath.Join(root, "build/images/sampleapp-v1")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing: run `make vm-images` (make test does)", p)
		}
	}
	var sums [2]map[string][32]byte
	for i := range sums {
		out := filepath.Join(t.TempDir(), "image")
		m, err := Build(Options{KernelDir: kernel, Busybox: "/bin/busybox", Init: filepath.Join(root, "bin/vminit"),
			Bundle: filepath.Join(root, "build/images/sampleapp-v1"), DiskSize: 1 << 20, Out: out})
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = map[string][32]byte{}
		for _, f := range m.Files() {
			b, err := os.ReadFile(filepath.Join(out, f))
			if err != nil {
				t.Fatal(err)
			}
			sums[i][f] = sha256.Sum256(b)
			if f == m.Kernel && !bytes.HasPrefix(b, []byte("\x7fELF")) {
				t.Errorf("kernel %s is not an ELF file", f)
			}
			if f == m.Initrd {
				names, files := readNewc(t, b)
				mods := strings.Fields(string(files["etc/immutd/modules"].Data))
				pos := map[string]int{}
				for j, p := range mods {
					pos[filepath.Base(p)] = j
				}
				for _, dep := range [][2]string{{"virtio.ko", "virtio_mmio.ko"}, {"9pnet.ko", "9pnet_virtio.ko"}, {"9pnet.ko", "9p.ko"}} {
					a, okA := pos[dep[0]]
					b, okB := pos[dep[1]]
					if !okA || !okB || a > b {
						t.Errorf("modules %v: want %s loaded before %s", mods, dep[0], dep[1])
					}
				}
				if !strings.Contains(strings.Join(names, " "), "app/bin/sampleapp") {
					t.Errorf("initramfs has no app/bin/sampleapp: %v", names)
				}
			}
		}
	}
	for f, s := range sums[0] {
		if sums[1][f] != s {
			t.Errorf("%s differs between two builds from the same inputs", f)
		}
	}
}
