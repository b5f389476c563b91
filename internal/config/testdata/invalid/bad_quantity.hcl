fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  remediation {
    max_unhealthy = "half"
  }
  rollout {
    max_surge         = "150%"
    max_unavailable   = -1
    progress_deadline = "0s"
    on_failure        = "pause"
    auto_revert       = true
    bake              = "8d"
    canary            = 2
    checkpoints       = ["50%", "25%", "100%"]
  }
}
