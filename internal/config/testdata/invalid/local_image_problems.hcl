fleet "missing" {
  size     = 1
  provider = "local"
  image    = "../images/sampleapp-v9"
  health {
    tcp "port" {}
  }
}

fleet "no-manifest" {
  size     = 1
  provider = "local"
  image    = "../images/no-manifest"
  health {
    tcp "port" {}
  }
}

fleet "file" {
  size     = 1
  provider = "local"
  image    = "../images/plain-file"
  health {
    tcp "port" {}
  }
}
