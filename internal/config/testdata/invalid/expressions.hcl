fleet "web" {
  size     = var.size
  provider = "docker"
  image    = format("nginx:%s", "1.27")
  health {
    tcp "port" {
      interval = null
    }
  }
}
