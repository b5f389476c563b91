# The example fleet of `make run`. Edit this copy in run/fleets.d/ while the
# agent runs: immutd picks every saved change up within a second.
fleet "web" {
  size     = 3
  provider = "local"
  # Try "../../build/images/sampleapp-v2" to roll the fleet to version 2.
  image = "../../build/images/sampleapp-v1"

  launch {
    stop_grace = "5s"
  }

  health {
    http "ready" {
      path                = "/healthz"
      interval            = "1s"
      timeout             = "500ms"
      unhealthy_threshold = 3
      startup_timeout     = "20s"
    }
  }

  drift {
    interval = "2s"
  }

  remediation {
    max_unhealthy = "50%"
    max_parallel  = 1
  }

  # A rollout whose new instances fail goes back to the last stable
  # version; a version is stable once it ran healthy for the bake.
  rollout {
    max_surge       = 1
    max_unavailable = 0
    bake            = "10s"
    on_failure      = "revert"
  }

  # Traffic follows health: an instance is listed in run/targets/web.json
  # (Prometheus file_sd JSON) once it stayed healthy for min_ready, and
  # taken out of it drain_delay before it is terminated.
  traffic {
    min_ready   = "2s"
    drain_delay = "3s"
    file "targets" {
      path = "../targets/web.json"
    }
  }
}
