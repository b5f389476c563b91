data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  probe_agents = 10
}
