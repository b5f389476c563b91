data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  bootstrap_expect = 3
  tls {
    ca_file   = "ca.pem"
    cert_file = "node.pem"
    key_file  = "node-key.pem"
  }
}

provider "sim" {
  launch_latency = "200ms"
}
