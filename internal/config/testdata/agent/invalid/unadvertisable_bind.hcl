data_dir   = "/var/lib/immutd"
fleets_dir = "/etc/immutd/fleets.d"

cluster {
  # Peers cannot dial 0.0.0.0; advertise_addr must be set.
  bind_addr = "0.0.0.0:7980"
}
