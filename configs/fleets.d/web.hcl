# Example fleet, installed into /etc/immutd/fleets.d/ by `make install`.
# The image path points at the sample app bundle that `make install`
# installs; point it at your own bundle directory.
fleet "web" {
  size     = 3
  provider = "local"
  image    = "/usr/local/share/immutd/images/sampleapp-v1"

  launch {
    env        = { GREETING_STYLE = "plain" }
    stop_grace = "10s"
  }

  health {
    http "ready" {
      path                = "/healthz"
      expect_status       = [200]
      interval            = "2s"
      timeout             = "1s"
      healthy_threshold   = 1
      unhealthy_threshold = 3
      startup_timeout     = "60s"
    }
  }

  drift {
    interval     = "10s"
    ignore_paths = ["logs/**"]
    orphans      = "adopt"
  }

  remediation {
    enabled       = true
    max_unhealthy = "50%"
    max_parallel  = 1
  }

  rollout {
    max_surge       = 1
    max_unavailable = 0
  }
}
