fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  launch {
    env = {
      GOOD                = "yes"
      PORT                = "8080"
      IMMUTD_FLEET        = "other"
      "2BAD"              = "x"
      "WITH-DASH"         = "x"
    }
  }
  health {
    tcp "port" {}
  }
}
