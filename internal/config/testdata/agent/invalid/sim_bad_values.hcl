data_dir   = "data"
fleets_dir = "fleets.d"

provider "sim" {
  dir              = ""
  launch_latency   = "11m"
  failure_rate     = 1.5
  health_flip_rate = -0.1
  seed             = 1.5
  host_capacity    = 20000
  hosts            = 3
}

provider "sim" {
}
