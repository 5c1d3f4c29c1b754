// Command containerd-shim-contrast-v2 is the containerd runtime shim
// (runtime_type io.containerd.contrast.v2) that runs each pod in its own VM.
package main

import "github.com/contrast-vm/contrast/shim"

func main() {
	shim.Main(shim.NewQEMU)
}
