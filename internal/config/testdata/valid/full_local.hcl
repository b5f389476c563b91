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
    max_unhealthy = "100%"
  }

  rollout {
    max_surge       = 0
    max_unavailable = "50%"
  }
}
