package harness

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// InstallerImage is the reference of the node installer image the
// harness writes (no registry: it is imported into the node's containerd).
const InstallerImage = "localhost/contrast/node-installer:test"

// InstallerPayload is what goes into the node installer image: the same
// files as deploy/Containerfile copies, written without a container engine.
type InstallerPayload struct {
	// Installer is the contrast-node-installer binary (/contrast-node-installer).
	Installer string
	// Shim is containerd-shim-contrast-v2 (/payload/bin/).
	Shim string
	// ImageDir is the guest image directory; its regular files go to
	// /payload/image/.
	ImageDir string
	// RuntimeTOML is the runtime configuration template (/payload/runtime.toml).
	RuntimeTOML []byte
	// Busybox provides /bin/sh and the few tools the installer's restart
	// command and nsenter need (deploy/Containerfile takes util-linux
	// from Debian instead).
	Busybox string
}

// installerApplets are the busybox links of the installer image.
var installerApplets = []string{"sh", "cat", "echo", "ls", "nsenter", "sleep", "dirname", "test", "["}

// WriteInstallerImage writes the node installer image as an OCI archive
// for `ctr images import`, reproducibly (mtime 0, sorted entries).
func WriteInstallerImage(path string, p InstallerPayload) error {
	read := func(src string) ([]byte, error) {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("installer image: %w", err)
		}
		return b, nil
	}
	files := []ImageFile{
		{Path: "bin", Dir: true, Mode: 0o755},
		{Path: "payload", Dir: true, Mode: 0o755},
		{Path: "payload/bin", Dir: true, Mode: 0o755},
		{Path: "payload/image", Dir: true, Mode: 0o755},
		{Path: "host", Dir: true, Mode: 0o755},
		{Path: "tmp", Dir: true, Mode: 0o1777},
		{Path: "payload/runtime.toml", Mode: 0o644, Data: p.RuntimeTOML},
	}
	for _, d := range []string{"dev", "proc", "sys", "etc"} {
		files = append(files, ImageFile{Path: d, Dir: true, Mode: 0o755})
	}
	for _, f := range []struct {
		path, src string
	}{
		{"contrast-node-installer", p.Installer},
		{"payload/bin/containerd-shim-contrast-v2", p.Shim},
		{"bin/busybox", p.Busybox},
	} {
		b, err := read(f.src)
		if err != nil {
			return err
		}
		files = append(files, ImageFile{Path: f.path, Mode: 0o755, Data: b})
	}
	ents, err := os.ReadDir(p.ImageDir)
	if err != nil {
		return fmt.Errorf("installer image: guest image: %w", err)
	}
	var names []string
	for _, e := range ents {
		// Regular files, or links to them.
		if st, err := os.Stat(filepath.Join(p.ImageDir, e.Name())); err == nil && st.Mode().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := read(filepath.Join(p.ImageDir, n))
		if err != nil {
			return err
		}
		files = append(files, ImageFile{Path: "payload/image/" + n, Mode: 0o644, Data: b})
	}
	for _, a := range installerApplets {
		files = append(files, ImageFile{Path: "bin/" + a, Mode: 0o777, Linkname: "busybox"})
	}
	return WriteOCIArchive(path, ImageSpec{
		Name:       InstallerImage,
		Files:      files,
		Entrypoint: []string{"/contrast-node-installer"},
		Env:        []string{"PATH=/bin"},
	})
}

// NodeInstallerManifest adapts deploy/contrast.yaml (manifest) to a test
// node: the DaemonSet runs InstallerImage (imported, never pulled), and
// its installer writes into the containerd instance's directory instead
// of the host's /opt/contrast and /etc/containerd (the host root it sees
// at /host is still the host's /, so the paths it writes into
// containerd's configuration are the ones containerd reads), talks to the
// instance's socket, and restarts containerd through sup's script. The
// RuntimeClass is left as it is. templateAnnotations, when set, are added
// to the DaemonSet's pod template (a changed template rolls the pods).
func NodeInstallerManifest(c *Containerd, sup *Supervisor, manifest []byte, templateAnnotations map[string]string) ([]byte, error) {
	var out [][]byte
	for i, doc := range bytes.Split(manifest, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("manifest document %d: %w", i, err)
		}
		if meta.Kind != "DaemonSet" {
			out = append(out, doc)
			continue
		}
		var ds appsv1.DaemonSet
		if err := yaml.UnmarshalStrict(doc, &ds); err != nil {
			return nil, fmt.Errorf("manifest document %d: %w", i, err)
		}
		spec := &ds.Spec.Template.Spec
		if len(spec.Containers) != 1 {
			return nil, fmt.Errorf("DaemonSet %s: %d containers, want the installer only", ds.Name, len(spec.Containers))
		}
		ctr := &spec.Containers[0]
		ctr.Image = InstallerImage
		ctr.ImagePullPolicy = corev1.PullNever
		ctr.Command = append(ctr.Command,
			"--prefix="+filepath.Join(c.Dir, "opt", "contrast"),
			"--containerd-config="+c.ConfigToml,
			"--drop-in-dir="+filepath.Join(c.Dir, "conf.d"),
			"--cri-socket="+c.Socket,
			"--restart-cmd=/bin/sh /host"+sup.Script,
		)
		for k, v := range templateAnnotations {
			if ds.Spec.Template.Annotations == nil {
				ds.Spec.Template.Annotations = map[string]string{}
			}
			ds.Spec.Template.Annotations[k] = v
		}
		b, err := yaml.Marshal(&ds)
		if err != nil {
			return nil, fmt.Errorf("DaemonSet %s: %w", ds.Name, err)
		}
		out = append(out, b)
	}
	return bytes.Join(out, []byte("\n---\n")), nil
}

// TestNodeRuntimeConfig is deploy/runtime.toml (tmpl) for a test node:
// the shim keeps its per-pod state in the containerd instance's directory
// (not /run/contrast) and converted layers in the build cache (not
// /var/cache/contrast), so a run leaves nothing on the host. Everything
// else is the shipped template.
func TestNodeRuntimeConfig(tmpl []byte, stateDir string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The test node's settings (integration/harness), then deploy/runtime.toml.\nstate_dir = %q\nsocket_dir = %q\n\n", stateDir, ShimSocketDir(stateDir))
	b.Write(tmpl)
	fmt.Fprintf(&b, "\n[layers]\ncache_dir = %q\n", DefaultLayerCache())
	return b.Bytes()
}
