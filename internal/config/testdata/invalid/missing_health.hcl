fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
}

fleet "api" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
  }
}
