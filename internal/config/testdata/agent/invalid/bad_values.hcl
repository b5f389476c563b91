node_name  = "node 1"
data_dir   = ""
http_addr  = "localhost"
fleets_dir = "/etc/immutd/fleets.d"
log_level  = "verbose"

auto_drain_removed_fleets = "yes"
reconcile_interval        = "2m"

cluster {
  bind_addr      = "127.0.0.1:99999"
  advertise_addr = "0.0.0.0:7980"
}

provider "local" {
  log_max_size = "1KiB"
  log_dir      = ""
  bind_host = "localhost"
}

provider "docker" {
  host         = "docker.example.com"
  publish_host = "127.0.0.1:80"
}

limits {
  remediation_rate = "31/0m"
}
