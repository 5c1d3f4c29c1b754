// Package deploy holds the Kubernetes manifests of the runtime: the
// RuntimeClass, the node installer's DaemonSet, and contrast.yaml, both in
// one file for `kubectl apply -f`.
package deploy

import "embed"

// Manifests are the YAML files of this directory.
//
//go:embed *.yaml
var Manifests embed.FS
