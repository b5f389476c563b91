fleet "api" {
  size     = 10
  provider = "docker"
  image    = "ghcr.io/immutd/sampleapp:v2.1"

  launch {
    command    = ["/app/server"]
    args       = ["-listen", ":8080", "-v"]
    env        = { LOG_FORMAT = "json", _DEBUG = "1", "GREETING" = "hello world" }
    stop_grace = "30s"

    docker {
      port         = 9090
      network_mode = "host"
      read_only    = true
      memory       = "256MiB"
      cpus         = 0.5
    }
  }

  health {
    http "ready" {
      path                = "/healthz?full=1"
      expect_status       = [200, 204]
      interval            = "5s"
      timeout             = "5s"
      healthy_threshold   = 2
      unhealthy_threshold = 5
      startup_timeout     = "2m"
    }
    tcp "port" {
      interval = "500ms"
      timeout  = "250ms"
    }
  }

  drift {
    interval     = "1m"
    ignore_paths = ["logs/**", "*.pid", "tmp/**/cache-?", "data/[a-c]*"]
    orphans      = "terminate"
  }

  remediation {
    enabled       = false
    max_unhealthy = 4
    max_parallel  = 2
  }

  rollout {
    max_surge       = "25%"
    max_unavailable = "10%"
  }
}
