data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  tls {
    ca_file   = "ca.pem"
    cert_file = "a.pem"
    key_file  = "a-key.pem"
  }
  insecure_plaintext {
    token_file = "token"
  }
}
