// Command contrast is the user's tool for Contrast pod VMs: it builds the
// guest image and writes and hashes pod policies; measurement and
// verification come as further subcommands of the same tree.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/containerd/log"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is a node of the command tree: a group with subcommands or a leaf
// that runs.
type command struct {
	name    string
	summary string
	sub     []*command
	run     func(ctx context.Context, sio *stdio, args []string) error
}

type stdio struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// usageError is a mistake in how the command was called: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func commands() *command {
	return &command{
		name:    "contrast",
		summary: "build Contrast pod VM images, write their policies, measure and verify them",
		sub: []*command{
			{
				name:    "image",
				summary: "the guest image (kernel, initrd, manifest)",
				sub: []*command{
					{name: "build", summary: "build a reproducible guest image", run: imageBuild},
				},
			},
			{
				name:    "policy",
				summary: "pod policies (what the host may ask of a pod VM)",
				sub: []*command{
					{name: "generate", summary: "write policies into Kubernetes YAML", run: policyGenerate},
					{name: "hash", summary: "print a policy's initdata digest (the pod's SNP HOSTDATA)", run: policyHash},
					{name: "initdata", summary: "print the initdata document a workload's pods launch with", run: policyInitdata},
				},
			},
			{name: "measure", summary: "compute the SEV-SNP launch measurement of a pod VM", run: measure},
			{name: "verify", summary: "verify a pod VM's SEV-SNP attestation report", run: verify},
		},
	}
}

// run executes the command line and returns the exit status: 0 success,
// 1 failure, 2 usage error.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	sio := &stdio{stdin: stdin, stdout: stdout, stderr: stderr}
	root := commands()
	fs := flag.NewFlagSet(root.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	debug := fs.Bool("debug", false, "log debug messages")
	fs.Usage = func() { printGroupUsage(stderr, []string{root.name}, root, fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *debug {
		if err := log.SetLevel("debug"); err != nil {
			fmt.Fprintf(stderr, "contrast: %v\n", err)
			return 1
		}
	}

	path := []string{root.name}
	cmd := root
	args = fs.Args()
	for cmd.run == nil {
		if len(args) == 0 {
			printGroupUsage(stderr, path, cmd, nil)
			return 2
		}
		name := args[0]
		if name == "help" || name == "-h" || name == "--help" {
			printGroupUsage(stdout, path, cmd, nil)
			return 0
		}
		next := findSub(cmd, name)
		if next == nil {
			fmt.Fprintf(stderr, "%s: unknown command %q; run '%s -h' for the list\n",
				strings.Join(path, " "), name, strings.Join(path, " "))
			return 2
		}
		cmd, path, args = next, append(path, name), args[1:]
	}

	err := cmd.run(ctx, sio, args)
	var uerr usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &uerr):
		fmt.Fprintf(stderr, "%s: %v; run '%s -h' for usage\n", strings.Join(path, " "), err, strings.Join(path, " "))
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %v\n", strings.Join(path, " "), err)
		return 1
	}
}

func findSub(cmd *command, name string) *command {
	for _, c := range cmd.sub {
		if c.name == name {
			return c
		}
	}
	return nil
}

func printGroupUsage(w io.Writer, path []string, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s <command> [flags]\n\n%s\n\ncommands:\n", strings.Join(path, " "), cmd.summary)
	for _, c := range cmd.sub {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	if fs != nil {
		fmt.Fprintf(w, "\nflags:\n")
		fs.PrintDefaults()
	}
}

// newFlagSet returns the flag set of a leaf command; its usage text is
// printed for -h and after a parse error.
func newFlagSet(sio *stdio, name, args, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(sio.stderr)
	fs.Usage = func() {
		fmt.Fprintf(sio.stderr, "usage: %s %s\n\n%s\n\nflags:\n", name, args, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs and turns a flag error into a usage error
// (the flag package has already printed it, with the usage text).
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
