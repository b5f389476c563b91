// Package qemu runs each instance of a fleet as a QEMU virtual machine
// booted from a golden VM image (internal/vmimage): the pattern immutd
// serves, on machines rather than processes.
//
// It owns these things under its directory:
//
//   - images/<hex>/: the content-addressed store of imported VM images
//     (manifest.json, kernel, initramfs, optional disk), read-only,
//     pinned by the sha256 of the manifest and its files.
//   - instances/<id>/: one VM: meta.json (its record, written before
//     QEMU starts), launch.json (what the guest's init gets through
//     fw_cfg: id, fleet, args, env), qemu.pid, qmp.sock (its QMP
//     socket), overlay.qcow2 (the copy-on-write overlay over the image's
//     disk) and share/ (its writable filesystem, mounted in the guest at
//     /mnt/instance over virtio-9p).
//   - logs/<id>.log: the VM's serial console, written by QEMU, rotated
//     by Run and kept after the VM is gone (LogKeep, LogMaxAge).
//   - locks/<id>.lock and slots/: per-instance flocks, and the boot
//     slots that bound the VMs booting at once.
//
// A VM is a QEMU process started with -daemonize, in a session of its
// own: it survives a restart of the agent, and a new Provider over the
// same directory finds it again by its record, pid file and QMP socket.
// It runs on microvm (or pc) with KVM when the host really has it and
// TCG otherwise, user-mode networking with the guest's port forwarded to
// BindHost, and no outbound network unless Options.Outbound.
package qemu
