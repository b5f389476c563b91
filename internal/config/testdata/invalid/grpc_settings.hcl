fleet "rpc" {
  size     = 2
  provider = "docker"
  image    = "nginx:1.27"
  health {
    grpc "serving" {
      path          = "/healthz"
      expect_status = [200]
      command       = ["/bin/true"]
      service       = "users v1"
    }
    grpc "typed" {
      service  = ["users"]
      interval = "50ms"
      timeout  = "2s"
    }
    tcp "port" {
      service = "users.v1.Users"
    }
    http "ready" {
      service = ""
      command = ["/bin/true"]
    }
    grpc "long" {
      service = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    }
  }
}
