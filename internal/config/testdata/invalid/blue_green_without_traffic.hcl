fleet "web" {
  size     = 2
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  rollout {
    strategy = "blue_green"
  }
}
