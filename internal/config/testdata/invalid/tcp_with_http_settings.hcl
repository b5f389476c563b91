fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {
      path          = "/healthz"
      expect_status = [200]
    }
    http "ready" {
      path          = "healthz"
      expect_status = [200, "ok", 99]
    }
  }
}
