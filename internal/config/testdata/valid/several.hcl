// Several fleets in one file come back sorted by name.
fleet "zeta" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
}

fleet "alpha" {
  # A fleet scaled to zero may forbid both surge and unavailability.
  size     = 0
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  rollout {
    max_surge       = 0
    max_unavailable = 0
  }
}

fleet "m-1" {
  size     = 1
  provider = "docker"
  image    = "localhost:5000/m1:latest"
  launch {
    docker {
      memory = 8388608
    }
  }
  health {
    tcp "port" {}
  }
}
