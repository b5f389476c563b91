data_dir   = "/var/lib/immutd"
fleets_dir = "/etc/immutd/fleets.d"
datadir    = "/tmp"

cluster {
  bind_adr = "127.0.0.1:7980"
  peers {}
}

provider "kvm" {
  dir = "/srv"
}

logging {
}
