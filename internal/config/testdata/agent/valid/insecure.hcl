data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  bind_addr        = "127.0.0.2:7980"
  bootstrap_expect = 3
  join             = ["127.0.0.1:7980", "[::1]:7980"]
  insecure_plaintext {
    token_file = "cluster-token"
  }
}

limits {
  max_instances          = 500
  max_launches_in_flight = 4
  remediation_rate       = "3/1h"
}
