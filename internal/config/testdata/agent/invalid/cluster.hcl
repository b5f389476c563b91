data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  bootstrap_expect = 12
  join             = ["10.0.0.2:7980", "nohost"]
  raft_multiplier  = 50
  health_quorum    = "most"
  tls {
    ca_file = "ca.pem"
  }
}

api {
  tls_cert_file = "api.pem"
}
