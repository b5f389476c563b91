fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    http "ready" {
      interval = "2s"
      timeout  = "3s"
    }
    tcp "port" {
      # The default timeout (1s) does not fit this interval.
      interval = "500ms"
    }
  }
}
