data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  bind_addr        = "0.0.0.0:7980"
  advertise_addr   = "10.0.0.1:7980"
  bootstrap_expect = 3
  join             = ["127.0.0.1:7981", "10.0.0.2:7980"]
  insecure_plaintext {
  }
}

limits {
  max_instances          = 0
  max_launches_in_flight = "many"
}
