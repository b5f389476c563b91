fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  replicas = 3
  health {
    http "ready" {
      paht = "/healthz"
    }
  }
}
