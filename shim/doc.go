// Package shim is containerd's runtime v2 shim for contrast
// (io.containerd.contrast.v2): one shim process per pod, which boots the
// pod's VM through a hypervisor.Hypervisor, serves containerd's task API by
// sending each request to the guest agent over vsock, and publishes
// containerd's events in the order its runc shim does.
//
// The task API (task.go) is thin; the pod (pod.go, launch.go, bundle.go),
// its guest containers (container.go) and the event order (events.go) do
// the work. docs/architecture.md has the picture.
package shim
