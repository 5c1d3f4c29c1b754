// Package enforce decides the agent's requests against a pod policy: it
// compiles the policy module with OPA (Compile, one prepared query per
// request kind), builds each rule's input from the request (Input), and
// keeps the per-pod state a decision needs (Gate: which container id was
// created as which container of the policy). Only the guest agent needs
// it; the shim and the CLI use package policy alone and so do not link OPA.
package enforce
