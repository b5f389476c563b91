fleet "bench" {
  size     = 3
  provider = "sim"
  image    = "images/no-such-sim-image"

  launch {
    docker {
      port = 8080
    }
  }

  health {
    http "ok" {
      path = "/healthz"
    }
  }
}

fleet "typo" {
  size     = 1
  provider = "simm"
  image    = "images/sampleapp-v1"

  health {
    http "ok" {
      path = "/healthz"
    }
  }
}
