package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/contrast-vm/contrast/layer"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/generate"
	"github.com/contrast-vm/contrast/policy/initdata"
)

func policyGenerate(ctx context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast policy generate", "[--settings FILE] (--containerd-address ADDR [--namespace NS] | --oci-layout DIR) [-o OUT] FILE.yaml...",
		"Writes each workload's policy into its pod template, inside a Confidential\n"+
			"Containers initdata document (annotation "+initdata.Annotation+",\n"+
			"base64 of the gzip-compressed TOML, as Kata reads it), and pins every image by\n"+
			"digest and the dm-verity root hash of each of its layers. FILE - reads\n"+
			"standard input; several files are written out as one stream of documents.\n"+
			"The annotated YAML goes to OUT or standard output; each workload's initdata\n"+
			"digest (its SNP HOSTDATA) goes to standard error as \"<sha256> <Kind>/<name>\".\n\n"+
			"The images come from containerd's image store (--containerd-address; pull\n"+
			"them first) or an OCI image layout (--oci-layout; references match the\n"+
			"layout's ref names). Every layer is converted to learn its root hash, with\n"+
			"progress on standard error when it is a terminal.")
	settingsPath := fs.String("settings", "", "settings file (JSON or YAML): exec commands, stdin, logs, env patterns, requests")
	address := fs.String("containerd-address", "", "containerd socket whose image store resolves tags, image configs and layers (images must be pulled)")
	namespace := fs.String("namespace", "k8s.io", "containerd namespace of the images (k8s.io is the CRI's)")
	ociLayout := fs.String("oci-layout", "", "OCI image layout directory holding the images, named by their ref names")
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
	switch {
	case *address != "" && *ociLayout != "":
		return usagef("--containerd-address and --oci-layout both name the images; give one")
	case *address != "":
		images, err := generate.ContainerdImages(*address, *namespace)
		if err != nil {
			return err
		}
		defer images.Close()
		opts.Images = images
		opts.Layers = layerConverter{stderr: sio.stderr, blobs: func(ctx context.Context, img generate.Image) ([]layer.Blob, error) {
			return layer.ContainerdImageLayers(namespaces.WithNamespace(ctx, *namespace), images.Client(), img.Name)
		}}
	case *ociLayout != "":
		images, err := generate.OCILayoutImages(*ociLayout)
		if err != nil {
			return err
		}
		opts.Images = images
		opts.Layers = layerConverter{stderr: sio.stderr, blobs: func(ctx context.Context, img generate.Image) ([]layer.Blob, error) {
			// By the pinned reference: the layers of the very image the policy names.
			return layer.OCILayoutImageLayers(ctx, images.Dir(), img.Ref)
		}}
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
			doc, err := initdata.ParsePod(w.Initdata)
			if err != nil {
				return fmt.Errorf("%s: %s/%s: %w", label, w.Kind, w.Name, err)
			}
			fmt.Fprintf(sio.stderr, "%s %s/%s\n", doc.HostDataHex(), w.Kind, w.Name)
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

// layerConverter is the generator's LayerSource: it converts each layer as
// the shim will (ext4 and dm-verity tree, into a temporary file) to learn the
// root hash the policy pins.
type layerConverter struct {
	// blobs finds the layers of an image the resolver found.
	blobs  func(ctx context.Context, img generate.Image) ([]layer.Blob, error)
	stderr io.Writer
}

func (c layerConverter) ImageLayers(ctx context.Context, img generate.Image) ([]generate.ImageLayer, error) {
	if img.Name == "" {
		return nil, fmt.Errorf("the image source has no name for %s to read its layers by", img.Ref)
	}
	blobs, err := c.blobs(ctx, img)
	if err != nil {
		return nil, err
	}
	tty := isTerminal(c.stderr)
	layers := make([]generate.ImageLayer, 0, len(blobs))
	for i, b := range blobs {
		bar := c.progressBar(fmt.Sprintf("%s layer %d/%d", img.Name, i+1, len(blobs)), tty)
		info, err := layer.ComputeInfo(ctx, b, func(tarBytes int64) { bar.Set64(tarBytes) })
		if tty {
			bar.Finish()
			fmt.Fprintln(c.stderr) // keep each layer's line
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, b.DiffID, err)
		}
		layers = append(layers, generate.ImageLayer{DiffID: info.DiffID.String(), RootHash: info.RootHash})
	}
	return layers, nil
}

// progressBar counts a layer's tar bytes on a terminal (the uncompressed
// size is not known in advance) and shows nothing otherwise.
func (c layerConverter) progressBar(description string, visible bool) *progressbar.ProgressBar {
	return progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(c.stderr),
		progressbar.OptionSetVisibility(visible),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
	)
}

func policyHash(_ context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast policy hash", "FILE",
		"Prints the SNP HOSTDATA a policy's pods launch with: the digest of the initdata\n"+
			"document that carries it (its first 32 bytes for sha384 or sha512). FILE is an\n"+
			"initdata document (TOML, hashed as it is), a Rego module (wrapped into the\n"+
			"minimal initdata document, as the runtime wraps a bare policy), or Kubernetes\n"+
			"YAML whose pod templates carry the initdata or policy annotation: one\n"+
			"workload prints the digest, several print one line each,\n"+
			"\"<hostdata> <Kind>/<name>\". FILE - reads standard input.")
	files, err := parseFlagsAndArgs(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(files) == 0:
		return usagef("no FILE; name an initdata document, a Rego module or a YAML file, or - for standard input")
	case len(files) > 1:
		return usagef("one FILE at a time (got %d)", len(files))
	}
	in, err := readInput(sio, files[0])
	if err != nil {
		return err
	}
	if doc, ok, err := policyFileInitdata(in); ok || err != nil {
		if err != nil {
			return fmt.Errorf("%s: %w", files[0], err)
		}
		fmt.Fprintln(sio.stdout, doc.HostDataHex())
		return nil
	}
	embedded, err := generate.Extract(in)
	if err != nil {
		return fmt.Errorf("%s: %w", files[0], err)
	}
	switch len(embedded) {
	case 0:
		return fmt.Errorf("%s: neither an initdata document, a Rego module (package ...) nor YAML with a workload carrying %s or %s", files[0], initdata.Annotation, policy.Annotation)
	case 1:
		fmt.Fprintln(sio.stdout, embedded[0].Initdata.HostDataHex())
	default:
		for _, e := range embedded {
			fmt.Fprintf(sio.stdout, "%s %s/%s\n", e.Initdata.HostDataHex(), e.Kind, e.Name)
		}
	}
	return nil
}

func policyInitdata(_ context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast policy initdata", "FILE.yaml",
		"Prints the initdata document (TOML, byte for byte the one whose digest is\n"+
			"HOSTDATA) that the one workload of FILE.yaml carries, in the initdata\n"+
			"annotation or as a bare policy the runtime wraps: what an attestation service\n"+
			"such as Trustee takes as the expected initdata. FILE - reads standard input.")
	files, err := parseFlagsAndArgs(fs, args)
	if err != nil {
		return err
	}
	if len(files) != 1 {
		return usagef("one FILE.yaml (got %d)", len(files))
	}
	in, err := readInput(sio, files[0])
	if err != nil {
		return err
	}
	embedded, err := generate.Extract(in)
	if err != nil {
		return fmt.Errorf("%s: %w", files[0], err)
	}
	switch len(embedded) {
	case 0:
		return fmt.Errorf("%s: no workload carries %s or %s; run contrast policy generate", files[0], initdata.Annotation, policy.Annotation)
	case 1:
		_, err := sio.stdout.Write(embedded[0].Initdata.Raw())
		return err
	}
	names := make([]string, len(embedded))
	for i, e := range embedded {
		names[i] = e.Kind + "/" + e.Name
	}
	return fmt.Errorf("%s carries %d workloads' policies (%s): give a YAML with one", files[0], len(embedded), strings.Join(names, ", "))
}

// policyFileInitdata returns the initdata document a policy file stands
// for: an initdata document as it is, or a Rego module wrapped as the
// runtime wraps a bare policy. ok is false for anything else (YAML).
func policyFileInitdata(in []byte) (doc *initdata.Document, ok bool, err error) {
	raw := in
	switch {
	case isRego(in):
		if raw, err = initdata.Wrap(in); err != nil {
			return nil, true, err
		}
	case !isInitdata(in):
		return nil, false, nil
	}
	doc, err = initdata.ParsePod(raw)
	return doc, true, err
}

// isInitdata reports whether in looks like an initdata document: its first
// line that is not blank or a comment sets algorithm or version, or opens
// [data]. No Kubernetes YAML or Rego module starts so.
func isInitdata(in []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(in))
	sc.Buffer(make([]byte, 0, 64*1024), len(in)+1)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, p := range []string{"algorithm ", "algorithm=", "version ", "version=", "[data]"} {
			if strings.HasPrefix(line, p) {
				return true
			}
		}
		return false
	}
	return false
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
