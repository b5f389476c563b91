fleet "web" {
  provider = "docker"
  health {
    tcp "port" {}
  }
}

fleet "api" {
  size  = 1
  image = "nginx:1.27"
}
