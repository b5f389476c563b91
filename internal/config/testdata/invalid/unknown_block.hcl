fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
    ping "icmp" {}
  }
  lunch {
    command = ["bin/app"]
  }
}
