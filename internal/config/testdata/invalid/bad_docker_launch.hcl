fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  launch {
    docker {
      port         = 70000
      network_mode = "none"
      read_only    = "maybe"
      memory       = "1MiB"
      cpus         = 0
    }
  }
  health {
    tcp "port" {}
  }
}

fleet "api" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  launch {
    docker {
      memory = "12 TB"
    }
  }
  health {
    tcp "port" {}
  }
}
