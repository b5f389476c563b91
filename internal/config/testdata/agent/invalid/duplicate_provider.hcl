data_dir   = "/var/lib/immutd"
fleets_dir = "/etc/immutd/fleets.d"

provider "local" {
}

provider "local" {
  dir = "/srv/immutd"
}

provider {
}

cluster {
}

cluster {
}
