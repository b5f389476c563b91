node_name  = "node-1"
data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  bind_addr          = "10.0.0.1:7980"
  bootstrap_expect   = 3
  join               = ["10.0.0.2:7980", "10.0.0.3:7980"]
  raft_multiplier    = 2.5
  health_quorum      = "all"
  leave_on_terminate = true
  tls {
    ca_file     = "tls/ca.pem"
    cert_file   = "tls/node-1.pem"
    key_file    = "tls/node-1-key.pem"
    server_name = "server.prod.immutd"
  }
}

api {
  token_file    = "api-token"
  tls_cert_file = "tls/api.pem"
  tls_key_file  = "tls/api-key.pem"
}

provider "local" {
  dir = "/srv/shared/immutd-local"
}
