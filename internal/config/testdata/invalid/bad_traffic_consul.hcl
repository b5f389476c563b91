fleet "web" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  traffic {
    consul "plain" {
      service         = "web"
      ca_file         = "/etc/consul/ca.pem"
      tls_server_name = "consul.example"
    }
    consul "half-client-cert" {
      address  = "https://consul.example:8501"
      service  = "web"
      key_file = "/etc/consul/key.pem"
    }
    consul "token" {
      service    = "web"
      token_file = "token"
      token      = "secret"
    }
  }
}
