data_dir           = "/var/lib/immutd"
fleets_dir         = "/etc/immutd/fleets.d"
reconcile_interval = "0s"
