# Example agent configuration, installed as /etc/immutd/agent.hcl by
# `make install`. See the README's configuration reference.
node_name  = "immutd-1"
data_dir   = "/var/lib/immutd"
fleets_dir = "/etc/immutd/fleets.d"
http_addr  = "127.0.0.1:7979"
log_level  = "info"

# Leave removed fleets running until `immutd fleet drain NAME`.
auto_drain_removed_fleets = false

cluster {
  bind_addr = "127.0.0.1:7980"
}

provider "local" {
  bind_host = "127.0.0.1"
}
