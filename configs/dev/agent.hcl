# The agent `make run` starts: a single-node cluster on loopback that keeps
# the example fleet in ../../run/fleets.d immutable with the local provider.
# Relative paths are relative to this file.
node_name  = "dev"
data_dir   = "../../run/data"
fleets_dir = "../../run/fleets.d"
http_addr  = "127.0.0.1:7979"
log_level  = "info"

cluster {
  bind_addr = "127.0.0.1:7980"
}
