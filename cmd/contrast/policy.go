package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/generate"
)

func policyGenerate(ctx context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast policy generate", "[--settings FILE] [--containerd-address ADDR] [--namespace NS] [-o OUT] FILE.yaml...",
		"Writes each workload's policy into its pod template (annotation "+policy.Annotation+")\n"+
			"and pins every image by digest. FILE - reads standard input; several files are\n"+
			"written out as one stream of documents. The annotated YAML goes to OUT or\n"+
			"standard output; each workload's policy hash (its SNP HOSTDATA) goes to\n"+
			"standard error as \"<sha256> <Kind>/<name>\".\n\n"+
			"Without --containerd-address, images must be pinned by digest in the YAML\n"+
			"and their configs are unknown (the policy then assumes they set nothing).")
	settingsPath := fs.String("settings", "", "settings file (JSON or YAML): exec commands, stdin, logs, env patterns, requests")
	address := fs.String("containerd-address", "", "containerd socket whose image store resolves tags and image configs (images must be pulled)")
	namespace := fs.String("namespace", "k8s.io", "containerd namespace of the images (k8s.io is the CRI's)")
	out := fs.String("o", "", "write the annotated YAML to this file instead of standard output")
	files, err := parseFlagsAndArgs(fs, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usagef("no input; name FILE.yaml, or - for standard input")
	}
	if n := countOf(files, "-"); n > 1 {
		return usagef("- (standard input) given %d times", n)
	}

	settings := generate.DefaultSettings()
	if *settingsPath != "" {
		if settings, err = generate.LoadSettings(*settingsPath); err != nil {
			return err
		}
	}
	opts := generate.Options{
		Settings: settings,
		Warn:     func(msg string) { fmt.Fprintf(sio.stderr, "warning: %s\n", msg) },
	}
	if *address != "" {
		images, err := generate.ContainerdImages(*address, *namespace)
		if err != nil {
			return err
		}
		defer images.Close()
		opts.Images = images
	}

	var result bytes.Buffer
	for i, name := range files {
		in, err := readInput(sio, name)
		if err != nil {
			return err
		}
		label := name
		if name == "-" {
			label = "standard input"
		}
		warn := opts.Warn
		opts.Warn = func(msg string) { warn(label + ": " + msg) }
		res, err := generate.Generate(ctx, in, opts)
		opts.Warn = warn
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		if i > 0 && !startsWithMarker(res.YAML) {
			result.WriteString("---\n")
		}
		result.Write(res.YAML)
		if len(res.YAML) > 0 && !bytes.HasSuffix(res.YAML, []byte("\n")) {
			result.WriteByte('\n')
		}
		for _, w := range res.Policies {
			fmt.Fprintf(sio.stderr, "%s %s/%s\n", policy.HashHex(w.Policy), w.Kind, w.Name)
		}
		if len(res.Policies) == 0 {
			fmt.Fprintf(sio.stderr, "warning: %s has no workload (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob)\n", label)
		}
	}
	if *out == "" {
		_, err := sio.stdout.Write(result.Bytes())
		return err
	}
	return writeFileAtomic(*out, result.Bytes())
}

func policyHash(_ context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast policy hash", "FILE",
		"Prints the SHA-256 of a policy, the SNP HOSTDATA its pods launch with. FILE is a\n"+
			"Rego module (hashed as it is) or Kubernetes YAML whose pod templates carry the\n"+
			"policy annotation: one workload prints the hash, several print one line each,\n"+
			"\"<sha256> <Kind>/<name>\". FILE - reads standard input.")
	files, err := parseFlagsAndArgs(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(files) == 0:
		return usagef("no FILE; name a Rego module or a YAML file, or - for standard input")
	case len(files) > 1:
		return usagef("one FILE at a time (got %d)", len(files))
	}
	in, err := readInput(sio, files[0])
	if err != nil {
		return err
	}
	if isRego(in) {
		fmt.Fprintln(sio.stdout, policy.HashHex(in))
		return nil
	}
	embedded, err := generate.Extract(in)
	if err != nil {
		return fmt.Errorf("%s: %w", files[0], err)
	}
	switch len(embedded) {
	case 0:
		return fmt.Errorf("%s: neither a Rego module (package ...) nor YAML with a workload carrying %s", files[0], policy.Annotation)
	case 1:
		fmt.Fprintln(sio.stdout, policy.HashHex(embedded[0].Policy))
	default:
		for _, e := range embedded {
			fmt.Fprintf(sio.stdout, "%s %s/%s\n", policy.HashHex(e.Policy), e.Kind, e.Name)
		}
	}
	return nil
}

// parseFlagsAndArgs parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func parseFlagsAndArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		// After "--" everything is positional.
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func readInput(sio *stdio, name string) ([]byte, error) {
	if name == "-" {
		b, err := io.ReadAll(sio.stdin)
		if err != nil {
			return nil, fmt.Errorf("read standard input: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err // already names the file
	}
	return b, nil
}

// isRego reports whether in is a Rego module: its first line that is not
// blank or a comment declares the package. No Kubernetes YAML starts so.
func isRego(in []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(in))
	sc.Buffer(make([]byte, 0, 64*1024), len(in)+1)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		return strings.HasPrefix(line, "package ") || strings.HasPrefix(line, "package\t")
	}
	return false
}

func startsWithMarker(y []byte) bool {
	return bytes.HasPrefix(y, []byte("---\n")) || bytes.HasPrefix(y, []byte("---\r\n")) || bytes.Equal(y, []byte("---"))
}

func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// writeFileAtomic replaces path with data, so a failure leaves the old file
// (which may be an input) whole.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, there is nothing to remove
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
