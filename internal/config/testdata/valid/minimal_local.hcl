# The smallest local fleet: every optional setting takes its default.
fleet "web" {
  size     = 3
  provider = "local"
  image    = "../images/sampleapp-v1"

  health {
    tcp "port" {}
  }
}
