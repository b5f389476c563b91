# The VM fleet of `make run-vm`: three QEMU virtual machines of the sample
# app's golden VM image (`make vm-images`). Edit this copy in run/fleets.d/
# while the agent runs.
fleet "vm" {
  size     = 3
  provider = "qemu"
  # Try "../../build/vm-images/sampleapp-v2" to roll the fleet to version 2.
  image = "../../build/vm-images/sampleapp-v1"

  launch {
    stop_grace = "5s"
    qemu {
      memory = "128MiB"
      cpus   = 1
    }
  }

  health {
    http "ready" {
      path                = "/healthz"
      interval            = "1s"
      timeout             = "1s"
      unhealthy_threshold = 3
      # A boot under TCG on a busy host can take several seconds.
      startup_timeout = "90s"
    }
  }

  drift {
    interval = "2s"
  }

  rollout {
    max_surge       = 1
    max_unavailable = 0
  }
}
