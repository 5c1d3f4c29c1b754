package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/contrast-vm/contrast/vmimage"
)

func imageBuild(ctx context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast image build", "--kernel PATH --agent PATH --runc PATH -o DIR",
		"Builds the guest image: copies the kernel, writes a reproducible initramfs\n"+
			"(the agent as /init, runc as /usr/bin/runc) and manifest.json into DIR.\n"+
			"DIR is replaced atomically; it is left alone when it already holds this image.")
	kernel := fs.String("kernel", "", "guest kernel bzImage (hack/kernel.sh prints its path)")
	agent := fs.String("agent", "", "static contrast-agent binary")
	runc := fs.String("runc", "", "static runc binary")
	out := fs.String("o", "", "output directory")
	cmdline := fs.String("cmdline", "", "kernel command line (default: "+vmimage.DefaultKernelCmdline+")")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var missing []string
	for _, f := range []struct{ name, val string }{{"--kernel", *kernel}, {"--agent", *agent}, {"--runc", *runc}, {"-o", *out}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return usagef("missing %s", strings.Join(missing, ", "))
	}

	p := newProgress(sio.stderr)
	res, err := vmimage.Build(ctx, vmimage.Options{
		Kernel:        *kernel,
		Agent:         *agent,
		Runc:          *runc,
		OutDir:        *out,
		KernelCmdline: *cmdline,
		Progress:      p.report,
	})
	if err != nil {
		return err
	}
	m := res.Image.Manifest
	initrd, _ := m.File(vmimage.InitrdFile)
	state := "built"
	if res.Unchanged {
		state = "up to date"
	}
	fmt.Fprintf(sio.stdout, "guest image %s %s: kernel %s, initrd sha256 %s\n", res.Image.Dir, state, m.KernelRelease, initrd.SHA256)
	return nil
}
