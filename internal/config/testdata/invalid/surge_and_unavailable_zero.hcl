fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  rollout {
    # 20% of 3, rounded down, is 0 as well.
    max_surge       = 0
    max_unavailable = "20%"
  }
}
