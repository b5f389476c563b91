// Package config owns immutd's configuration: the agent file and the
// watched directory of fleet files. It decodes both from HCL strictly
// (unknown attributes and blocks are errors), applies every default in one
// place (defaults.go), resolves relative paths, and validates, reporting
// all problems of a file or directory together as Diagnostics with
// file:line:column positions and field paths.
//
// LoadAgent reads the agent file; LoadFleets reads a fleets directory into
// a FleetSet, the whole desired state. A Watcher follows a fleets
// directory and publishes a new Update whenever its content changes: the
// directory is applied as a whole, so one invalid file yields an Update
// with an error and the caller keeps the last good FleetSet.
//
// The package does no reconciling and talks to no provider; the types it
// produces (Agent, FleetSet, Fleet) are the contract other packages read.
package config
