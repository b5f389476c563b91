# The agent `make run-vm` starts: the agent of `make run` plus the qemu
# provider, keeping the fleets in ../../run/fleets.d (the example fleet
# and the VM fleet vm.hcl) immutable. Relative paths are relative to this
# file.
node_name  = "dev"
data_dir   = "../../run/data"
fleets_dir = "../../run/fleets.d"
http_addr  = "127.0.0.1:7979"
log_level  = "info"

cluster {
  bind_addr = "127.0.0.1:7980"
}

# VMs under run/data/qemu, consoles in run/data/qemu/logs. KVM when the
# host has it, TCG otherwise.
provider "qemu" {}
