fleet "web" {
  size     = 3
  provider = "local"
  image    = "../images/sampleapp-v1"
  health {
    http "ready" {
      path = "/healthz"
    }
  }
}
