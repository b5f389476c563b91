fleet "web" {
  size     = 2
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  rollout {
    analysis {
      prometheus = "ftp://prom"
      interval   = "0s"
      metric "errors" {
        query   = ""
        success = "result >> 1"
      }
      metric "errors" {
        query = "up"
      }
      metric "Bad Name" {
        query   = "up"
        failure = "result > 1"
        failure_limit = -2
      }
    }
  }
}

fleet "api" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  rollout {
    analysis {
      interval = "5s"
    }
  }
}
