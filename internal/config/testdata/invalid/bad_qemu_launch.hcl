fleet "vm-command" {
  size     = 1
  provider = "qemu"
  image    = "../images/sampleapp-v1"
  launch {
    command = ["bin/other"]
    qemu {
      memory = "16MiB"
      cpus   = 65
    }
  }
  health {
    tcp "port" {}
  }
}

fleet "vm-huge" {
  size     = 1
  provider = "qemu"
  image    = "../images/sampleapp-v1"
  launch {
    qemu {
      memory = "65GiB"
      disk   = "10GiB"
    }
  }
  health {
    tcp "port" {}
  }
}

fleet "not-a-vm" {
  size     = 1
  provider = "docker"
  image    = "immutd/sampleapp:1"
  launch {
    qemu {
      memory = "128MiB"
    }
  }
  health {
    tcp "port" {}
  }
}

fleet "vm-missing" {
  size     = 1
  provider = "qemu"
  image    = "../images/no-such-vm"
  health {
    tcp "port" {}
  }
}
