fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  remediation {
    enabled             = false
    mode                = "act"
    report              = ["unhealthy", "exited"]
    rate                = "5 per 10m"
    secondary_rate      = "1000/10m"
    unhealthy_threshold = 3
    storm_cooldown      = "-1s"
    storm_guard         = "no"
    flap_threshold      = 17
    flap_window         = "0s"
    quarantine {
      max     = 0
      ttl     = "1s"
      reasons = ["excess"]
      keep    = true
    }
  }
}

fleet "api" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  remediation {
    mode           = "dry"
    rate           = "5/0s"
    secondary_rate = "x/1m"
  }
}
