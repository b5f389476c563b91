fleet "rpc" {
  size     = 2
  provider = "docker"
  image    = "nginx:1.27"
  health {
    grpc "whole" {}
    grpc "users" {
      service             = "users.v1.Users"
      interval            = "5s"
      timeout             = "2s"
      healthy_threshold   = 2
      unhealthy_threshold = 4
      startup_timeout     = "2m"
    }
    exec "minimal" {
      command = ["/bin/true"]
    }
    exec "script" {
      command  = ["/bin/true", "--port", "5432", ""]
      interval = "100ms"
      timeout  = "100ms"
    }
    http "ready" {}
    tcp "port" {}
  }
}
