fleet "api" {
  size     = 2
  provider = "docker"
  image    = "registry.example.com:5000/team/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

  health {
    http "ready" {}
  }
}
