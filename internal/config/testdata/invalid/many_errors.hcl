# Every problem in a file is reported together.
fleet "web" {
  size     = 20000
  provider = "kvm"
  image    = "nginx:1.27"
  colour   = "blue"

  launch {
    env        = { PORT = "80" }
    stop_grace = "1h"
  }

  health {
    http "ready" {
      path     = "healthz"
      interval = "1s"
      timeout  = "2s"
    }
    http "ready" {}
  }

  remediation {
    max_parallel = 0
  }
}

fleet "api" {
  size     = 2
  provider = "docker"
  image    = "api:v1"
  health {
    tcp "port" {
      unhealthy_threshold = 0
    }
  }
  rollout {
    max_surge       = "0%"
    max_unavailable = 0
  }
}
