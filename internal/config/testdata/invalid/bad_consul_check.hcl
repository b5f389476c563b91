fleet "alone" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    consul "catalog" {}
  }
}

fleet "mixed" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {
      address = "127.0.0.1:8500"
    }
    consul "catalog" {
      address = "consul:8500/v1"
      path    = "/healthz"
    }
  }
}
