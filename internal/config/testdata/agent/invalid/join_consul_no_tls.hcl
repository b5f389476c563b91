data_dir   = "/var/lib/immutd"
fleets_dir = "/etc/immutd/fleets.d"

cluster {
  bind_addr = "10.0.0.5:7980"
  join_consul {}
}
