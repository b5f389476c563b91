node_name  = "node-1"
data_dir   = "/var/lib/immutd"
http_addr  = "0.0.0.0:8080"
fleets_dir = "../fleets"
log_level  = "debug"

auto_drain_removed_fleets = true
reconcile_interval        = "500ms"

cluster {
  bind_addr      = "0.0.0.0:7980"
  advertise_addr = "10.0.0.5:7980"
}

provider "local" {
  dir          = "local-store"
  bind_host    = "::1"
  log_dir      = "/var/log/immutd"
  log_max_size = "1MiB"
}

provider "docker" {
  host         = "tcp://10.0.0.9:2376"
  cert_path    = "certs"
  tls_verify   = false
  publish_host = "10.0.0.5"
}

provider "qemu" {
  dir          = "vms"
  accel        = "tcg"
  boot_slots   = 3
  boot_wait    = "90s"
  outbound     = true
  log_max_size = "8MiB"
  log_keep     = 50
  log_max_age  = "48h"
}
