package qemu

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/immutd/immutd/internal/vmimage"
)

// The tests boot real VMs from the images `make vm-images` builds
// (build/vm-images/sampleapp-v1 and -v2, from the kernel in
// build/vm/kernel); `make test` builds them first. Under -short they are
// skipped; otherwise missing images fail the test with what to run.

// repoRoot is the module's root directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// needVMs skips under -short and fails when QEMU or the images are missing.
func needVMs(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots real VMs; not with -short")
	}
	root := repoRoot(t)
	for _, p := range []string{"build/vm-images/sampleapp-v1/manifest.json", "build/vm-images/sampleapp-v2/manifest.json"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Fatalf("%s is missing: run `make vm-images` (make test does)", p)
		}
	}
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		t.Fatalf("%s not found: run .ci/ensure-vm-tools (make test does)", DefaultBinary)
	}
	return root
}

// sampleImage is the directory of the sample app's VM image, version v (1 or 2).
func sampleImage(t testing.TB, v int) string {
	return filepath.Join(needVMs(t), "build", "vm-images", "sampleapp-v"+strconv.Itoa(v))
}

var crashOnce struct {
	sync.Once
	dir string
	err error
}

// crashImage builds (once per test binary) a VM image whose app exits at
// once with a failure: the sample app with a flag it refuses.
func crashImage(t testing.TB) string {
	root := needVMs(t)
	crashOnce.Do(func() {
		crashOnce.dir, crashOnce.err = buildCrashImage(root)
	})
	if crashOnce.err != nil {
		t.Fatalf("build the crashing VM image: %v", crashOnce.err)
	}
	return crashOnce.dir
}

func buildCrashImage(root string) (string, error) {
	tmp, err := os.MkdirTemp("", "immutd-qemu-crash-")
	if err != nil {
		return "", err
	}
	bundle := filepath.Join(tmp, "bundle")
	cp := exec.Command("cp", "-R", filepath.Join(root, "build/images/sampleapp-v1"), bundle)
	if out, err := cp.CombinedOutput(); err != nil {
		return "", fmt.Errorf("copy the sample bundle: %v: %s", err, out)
	}
	man, _ := json.Marshal(map[string]any{"name": "sampleapp", "version": "crash", "entrypoint": []string{"bin/sampleapp", "-no-such-flag"}})
	if err := os.WriteFile(filepath.Join(bundle, "manifest.json"), man, 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(tmp, "image")
	_, err = vmimage.Build(vmimage.Options{KernelDir: filepath.Join(root, "build/vm/kernel"), Busybox: "/bin/busybox",
		Init: filepath.Join(root, "bin/vminit"), Bundle: bundle, Out: out})
	return out, err
}

// qemuProcs returns the live QEMU processes of instance id in dir, found
// in /proc by their -pidfile, without the provider.
func qemuProcs(t testing.TB, dir, id string) []int {
	t.Helper()
	want := []byte("\x00-pidfile\x00" + filepath.Join(dir, "instances", id, pidFile) + "\x00")
	names, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, de := range names {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !bytes.Contains(cmdline, want) {
			continue
		}
		if state, _, err := procStat(pid); err == nil && state != 'Z' && state != 'X' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// testProvider opens a provider over dir whose boot slots are shared by
// every provider of the test binary (slots), so that parallel tests do not
// boot more VMs at once than the host has cores.
func testProvider(t testing.TB, dir string) *Provider {
	t.Helper()
	p, err := New(Options{Dir: dir, SlotDir: sharedSlots(t)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var slots struct {
	sync.Once
	dir string
}

func sharedSlots(t testing.TB) string {
	slots.Do(func() {
		d, err := os.MkdirTemp("", "immutd-qemu-slots-")
		if err != nil {
			panic(err)
		}
		slots.dir = d
	})
	return slots.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if slots.dir != "" {
		os.RemoveAll(slots.dir)
	}
	if crashOnce.dir != "" {
		os.RemoveAll(filepath.Dir(crashOnce.dir))
	}
	os.Exit(code)
}
