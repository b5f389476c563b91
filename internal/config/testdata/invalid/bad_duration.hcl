fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  launch {
    stop_grace = "10"
  }
  health {
    http "ready" {
      interval        = "50ms"
      startup_timeout = "0s"
    }
  }
  drift {
    interval = "soon"
  }
}
