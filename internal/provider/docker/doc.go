// Package docker is the provider that runs each instance of a fleet as a
// container on a Docker engine, through the engine's API (the official Go
// client, with API version negotiation, so engines from API 1.41 on work).
//
// It owns the containers it launches and nothing else. The engine holds
// all state; the provider keeps none:
//
//   - A container's name is "immutd-<instance id>", so a retried launch
//     finds the container it already made, and a retried terminate of a
//     container that is gone is success.
//   - Labels say what a container is: io.immutd.managed=true marks every
//     container immutd launched; io.immutd.fleet, io.immutd.instance,
//     io.immutd.image (the image ID it was launched from) and
//     io.immutd.template (the launch template hash) identify it. List
//     reports the image the container really runs, so image drift is
//     the label against reality.
//   - Images are pinned by image ID: Resolve turns a reference into the
//     ID the engine has now, and containers are created from that ID.
//     Nothing is ever pulled.
//
// Ports are published on the provider's publish host (127.0.0.1 by
// default) on ports the engine picks; with host networking, immutd picks
// a free port and passes it as PORT. Restart policy is "no": an instance
// that ends stays ended until immutd replaces it.
//
// Inspect finds in-place drift from the engine's record of the
// container's changed files (`docker diff`). Watch turns engine events
// (die, oom, destroy, stop, kill) into wake-ups so the leader reacts to a
// dead container before its next pass. BuildImage builds an image from a
// directory on the engine, for tests and tooling.
package docker
