data_dir   = "data"
fleets_dir = "fleets.d"

cluster {
  health_quorum = "3"
  probe_agents  = 2
}
