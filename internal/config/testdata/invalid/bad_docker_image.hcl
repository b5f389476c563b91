fleet "untagged" {
  size     = 1
  provider = "docker"
  image    = "nginx"
  health {
    tcp "port" {}
  }
}

fleet "upper" {
  size     = 1
  provider = "docker"
  image    = "Nginx:1.27"
  health {
    tcp "port" {}
  }
}

fleet "short-digest" {
  size     = 1
  provider = "docker"
  image    = "nginx@sha256:abc123abc123abc123abc123abc123abc123"
  health {
    tcp "port" {}
  }
}
