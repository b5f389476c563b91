data_dir   = "/var/lib/immutd"
fleets_dir = "/etc/immutd/fleets.d"

cluster {
  bind_addr        = "10.0.0.5:7980"
  bootstrap_expect = 3
  join_consul {
    address   = "consul.service:8500"
    service   = "immutd agents"
    ca_file   = "/etc/consul/ca.pem"
    token     = "secret"
  }
}
