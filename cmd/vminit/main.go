//go:build linux

// Command vminit is the init (PID 1) of immutd's golden VM images
// (internal/vmimage builds them; internal/provider/qemu runs them). It
// turns the machine QEMU boots into one running app, and powers it off
// when the app ends, so a VM lives exactly as long as its app:
//
//  1. mounts /proc, /sys, /dev, /tmp and /run, and loads the kernel
//     modules listed, in order, in /etc/immutd/modules;
//  2. reads the launch (instance id, fleet, image digest, args, env,
//     guest port) the provider passes through fw_cfg as
//     opt/immutd/launch.json;
//  3. brings up eth0 as 10.0.2.15/24 for QEMU's user-mode network (with
//     busybox ip) and mounts the instance's writable share (virtio-9p,
//     tag "instance") at /mnt/instance when the VM has one;
//  4. starts the app from /etc/immutd/app.json ({"command": [...],
//     "dir": "..."}) with the launch's args and env appended, its output
//     on the serial console;
//  5. on the ACPI power button (QMP system_powerdown) sends the app
//     SIGTERM and waits for it; when the app exits, for whatever reason,
//     it says how on the console ("vminit: app exited: ...") and powers
//     the machine off.
//
// Every line vminit writes starts with "vminit: ", so the provider can
// tell its own lines from the app's in the console log.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/vmimage"
)

// Paths inside the image and the guest.
const (
	modulesList = "/etc/immutd/modules"
	appFile     = "/etc/immutd/app.json"
	launchFile  = "/sys/firmware/qemu_fw_cfg/by_name/" + vmimage.FwCfgLaunch + "/raw"
	busybox     = "/bin/busybox"
)

// launch is what the provider passes to the guest.
type launch = vmimage.GuestLaunch

// app is /etc/immutd/app.json: what the image runs.
type app struct {
	Command []string `json:"command"`
	Dir     string   `json:"dir"`
}

func say(format string, a ...any) {
	fmt.Fprintf(os.Stdout, "vminit: "+format+"\n", a...)
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "vminit: not PID 1; this is the init of an immutd VM image, not a program to run by hand")
		os.Exit(2)
	}
	err := run()
	if err != nil {
		say("%v", err)
	}
	unix.Sync()
	say("powering off")
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Reboot returns only on failure; PID 1 exiting panics the kernel,
	// which (panic=1, -no-reboot) ends QEMU too.
	os.Exit(1)
}

func run() error {
	if err := mountBase(); err != nil {
		return err
	}
	if err := loadModules(); err != nil {
		return err
	}
	l, err := readLaunch()
	if err != nil {
		return err
	}
	say("instance %s of fleet %s", l.ID, l.Fleet)
	if err := network(); err != nil {
		return err
	}
	if l.Share {
		if err := mountShare(); err != nil {
			return err
		}
	}
	a, err := readApp()
	if err != nil {
		return err
	}
	return runApp(a, l)
}

func mountBase() error {
	for _, m := range []struct{ fs, dir string }{
		{"proc", "/proc"}, {"sysfs", "/sys"}, {"devtmpfs", "/dev"}, {"tmpfs", "/tmp"}, {"tmpfs", "/run"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.fs, m.dir, m.fs, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fs, m.dir, err)
		}
	}
	return nil
}

// loadModules loads the image's kernel modules in the listed order (the
// builder puts dependencies first).
func loadModules() error {
	b, err := os.ReadFile(modulesList)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		path := strings.TrimSpace(line)
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("module %s: %w", path, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", path, err)
		}
	}
	return nil
}

func readLaunch() (launch, error) {
	var l launch
	f, err := os.Open(launchFile)
	if err != nil {
		return l, fmt.Errorf("read the launch from fw_cfg: %w (the VM was not started by immutd's qemu provider)", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, vmimage.MaxLaunch+1))
	if err != nil {
		return l, fmt.Errorf("read %s: %w", launchFile, err)
	}
	if len(b) > vmimage.MaxLaunch {
		return l, fmt.Errorf("launch file is larger than %d bytes", vmimage.MaxLaunch)
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("launch file: %w", err)
	}
	if l.GuestPort <= 0 || l.GuestPort > 65535 {
		return l, fmt.Errorf("launch file: guest_port %d is not a port", l.GuestPort)
	}
	return l, nil
}

// network configures eth0 for QEMU's user-mode network, waiting for the
// device to appear (virtio probing is asynchronous).
func network() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/sys/class/net/eth0"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("no eth0 after 10s: the VM has no network device, or its driver is not in the image")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", "10.0.2.15/24", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", "10.0.2.2"},
	} {
		cmd := exec.Command(busybox, args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func mountShare() error {
	if err := os.MkdirAll(vmimage.ShareMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(vmimage.ShareTag, vmimage.ShareMount, "9p", unix.MS_NOSUID|unix.MS_NODEV, "trans=virtio,version=9p2000.L,msize=262144,cache=none"); err != nil {
		return fmt.Errorf("mount the instance share on %s: %w", vmimage.ShareMount, err)
	}
	return nil
}

func readApp() (app, error) {
	var a app
	b, err := os.ReadFile(appFile)
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("%s: %w", appFile, err)
	}
	if len(a.Command) == 0 {
		return a, fmt.Errorf("%s: no command", appFile)
	}
	if a.Dir == "" {
		a.Dir = "/"
	}
	return a, nil
}

// runApp starts the app and reaps every process until it exits (PID 1
// inherits orphans). The power button stops it with SIGTERM.
func runApp(a app, l launch) error {
	env := []string{"PATH=/bin", "HOME=/", "HOST=0.0.0.0", "PORT=" + strconv.Itoa(l.GuestPort),
		"IMMUTD_INSTANCE_ID=" + l.ID, "IMMUTD_FLEET=" + l.Fleet, "IMMUTD_IMAGE_DIGEST=" + l.Digest}
	for k, v := range l.Env {
		env = append(env, k+"="+v)
	}
	argv := append(append([]string{}, a.Command...), l.Args...)
	path := argv[0]
	if !filepath.IsAbs(path) {
		path = filepath.Join(a.Dir, path)
	}
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Dir: a.Dir, Env: env, Files: []uintptr{0, 1, 2},
		Sys: &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return fmt.Errorf("app failed to start: %s: %w", path, err)
	}
	say("app started: pid %d: %s", pid, strings.Join(argv, " "))
	go powerButton(pid)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for the app: %w", err)
		}
		if got != pid {
			continue
		}
		switch {
		case ws.Exited():
			say("app exited: exit status %d", ws.ExitStatus())
		case ws.Signaled():
			say("app exited: killed by signal %d (%s)", ws.Signal(), ws.Signal())
		}
		return nil
	}
}

// powerButton watches every input device for KEY_POWER and sends the app
// SIGTERM on the first press.
func powerButton(pid int) {
	pressed := make(chan string, 1)
	devs, _ := filepath.Glob("/dev/input/event*")
	for _, dev := range devs {
		go watchInput(dev, pressed)
	}
	if len(devs) == 0 {
		say("no input device: the ACPI power button cannot stop the app (the provider kills the VM after its grace)")
		return
	}
	dev := <-pressed
	say("power button (%s): sending SIGTERM to the app", dev)
	_ = unix.Kill(pid, unix.SIGTERM)
}

// Input event constants (linux/input-event-codes.h).
const (
	evKey     = 1
	keyPower  = 116
	eventSize = 24 // struct input_event on 64-bit: timeval, type, code, value
)

func watchInput(dev string, pressed chan<- string) {
	f, err := os.Open(dev)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, eventSize)
	for {
		if _, err := io.ReadFull(f, buf); err != nil {
			return
		}
		typ := binary.LittleEndian.Uint16(buf[16:])
		code := binary.LittleEndian.Uint16(buf[18:])
		value := int32(binary.LittleEndian.Uint32(buf[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			select {
			case pressed <- dev:
			default:
			}
			return
		}
	}
}
