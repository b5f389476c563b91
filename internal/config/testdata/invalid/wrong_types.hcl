fleet "web" {
  size     = "three"
  provider = ["docker"]
  image    = "nginx:1.27"
  launch {
    command = "bin/app"
    args    = ["-x", ["nested"]]
    env     = ["A=1"]
  }
  health {
    tcp "port" {
      healthy_threshold = 1.5
    }
  }
  remediation {
    enabled = "sometimes"
  }
  launch {
  }
}
