data_dir = "/var/lib/immutd"
fleets_dir = "/etc/immutd/fleets.d"
cluster {
  bind_addr = "127.0.0.1:7980"
