// Package harness runs the project's end-to-end scenarios against real
// binaries: a private containerd instance, 2.4 or 1.7 (every path under
// one temporary directory, so several can run beside each other and
// beside the host's), OCI images built here from busybox (no registry is
// reachable), crictl as the CRI client (and ctr where crictl has no verb),
// sessions that talk to a running crictl through pipes or a
// pseudo-terminal, and helpers that find what a pod left behind
// (processes, mounts, sockets, network devices, state directories).
//
// Everything returns errors instead of taking a *testing.T so that the demo
// program (hack/demo) uses the same code as the tests in integration/.
package harness
