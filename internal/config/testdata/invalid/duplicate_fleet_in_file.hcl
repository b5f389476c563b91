fleet "web" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
}

fleet "web" {
  size     = 2
  provider = "docker"
  image    = "nginx:1.28"
  health {
    tcp "port" {}
  }
}
