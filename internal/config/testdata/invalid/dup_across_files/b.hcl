fleet "api" {
  size     = 1
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
}

fleet "web" {
  size     = 2
  provider = "local"
  image    = "../../images/sampleapp-v1"
  health {
    tcp "port" {}
  }
}
