fleet "api" {
  size     = 2
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
}

fleet "batch" {
  size     = 1
  provider = "docker"
  image    = "busybox:1.36"
  health {
    tcp "port" {}
  }
}
