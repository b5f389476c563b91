fleet "worker" {
  size     = 4
  provider = "local"
  image    = "../images/sampleapp-v2/"

  launch {
    command = ["bin/app", "worker"]
    env = {
      QUEUE = "jobs"
    }
  }

  health {
    tcp "port" {
      startup_timeout = "10s"
    }
  }

  drift {
    orphans = "ignore"
  }

  remediation {
    max_unhealthy       = "100%"
    mode                = "act"
    report              = ["drift_mutated", "orphan"]
    rate                = "5/10m"
    secondary_rate      = "0/1h"
    unhealthy_threshold = "40%"
    storm_cooldown      = "5m"
    storm_guard         = false
    healthy_delay       = "30s"
    flap_threshold      = 0
    flap_window         = "1h"
    max_launch_failures = 3
    quarantine {
      max     = 2
      ttl     = "12h"
      reasons = ["unhealthy"]
    }
  }

  rollout {
    max_surge         = 0
    max_unavailable   = "50%"
    progress_deadline = "5m"
    bake              = "1m"
    auto_revert       = true
    strategy          = "canary"
    canary            = "50%"
    promote_after     = "30s"
    checkpoints       = ["50%", "75%"]
    checkpoint_pause  = "1m"
    analysis {
      prometheus = "http://127.0.0.1:9090"
      interval   = "5s"
      metric "errors" {
        query               = "sum(rate(errors_total{image_digest=\"{{image_digest}}\"}[1m]))"
        success             = "result < 0.01"
        failure             = "result >= 0.05"
        count               = 3
        failure_limit       = 1
        consecutive_success = 2
      }
      metric "latency" {
        query   = "histogram_quantile(0.99, rate(latency_bucket[1m]))"
        success = "result < 0.5"
        dry_run = true
      }
    }
  }
}
