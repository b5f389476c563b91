data_dir   = "data"
fleets_dir = "fleets.d"
