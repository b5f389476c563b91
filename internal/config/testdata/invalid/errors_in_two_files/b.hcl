fleet "api" {
  size = 1
  provider = "docker
}
