fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
  }
  drift {
    ignore_paths = ["logs/**", "/var/log", "../up", "a/**b", "x//y", "[z", ""]
    orphans      = "kill"
  }
}
