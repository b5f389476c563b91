# Neither data_dir nor fleets_dir is set.
node_name = "node-1"
