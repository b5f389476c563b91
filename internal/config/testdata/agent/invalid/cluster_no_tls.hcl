data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  bind_addr        = "10.0.0.1:7980"
  bootstrap_expect = 3
  join             = ["10.0.0.2:7980", "10.0.0.3:7980"]
}
