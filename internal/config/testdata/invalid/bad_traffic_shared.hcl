fleet "shares-a" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  traffic {
    file "t" {
      path = "/var/lib/immutd/shared.json"
    }
    haproxy "lb" {
      socket  = "/run/haproxy/admin.sock"
      backend = "web"
    }
  }
}

fleet "shares-b" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  traffic {
    file "t" {
      path = "/var/lib/immutd/shared.json"
    }
    haproxy "lb" {
      socket  = "/run/haproxy/admin.sock"
      backend = "web"
    }
  }
}
