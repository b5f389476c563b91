fleet "empty-gate" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  traffic {}
}

fleet "bad" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  traffic {
    min_ready       = "-1s"
    drain_delay     = "2h"
    keep_min        = -1
    backend_timeout = "10ms"
    file "targets" {
      path = "targets/web.json"
    }
    file "yaml" {
      path = "/var/lib/immutd/web.yml"
    }
    file "targets" {
      path = "/var/lib/immutd/../web.json"
    }
    haproxy "Edge" {
      socket  = "run/haproxy.sock"
      backend = "web backend"
    }
    haproxy "lb" {}
    consul "dc1" {
      address   = "consul:8500/v1"
      service   = "web_app"
      tags      = ["", "ok"]
      meta      = { "immutd-fleet" = "x", "bad key" = "y" }
      cert_file = "/etc/consul/cert.pem"
      token     = "secret"
    }
  }
}
