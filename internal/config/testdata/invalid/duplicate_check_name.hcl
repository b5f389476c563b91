fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    http "ready" {}
    tcp "live" {}
    tcp "ready" {}
    http "live" {
      path = "/live"
    }
  }
}
