fleet "web" {
  size     = 3
  provider = "local"
  image    = "../images/sampleapp-v1"
  launch {
    docker {
      port = 8080
    }
  }
  health {
    tcp "port" {}
  }
}
