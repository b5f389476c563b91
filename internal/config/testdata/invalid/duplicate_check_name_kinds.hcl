fleet "web" {
  size     = 3
  provider = "docker"
  image    = "nginx:1.27"
  health {
    grpc "ready" {}
    exec "ready" {
      command = ["/usr/local/bin/check"]
    }
    http "live" {}
    exec "live" {
      command = ["/usr/local/bin/check"]
    }
    tcp "rpc" {}
    grpc "rpc" {
      service = "users.v1.Users"
    }
  }
}
