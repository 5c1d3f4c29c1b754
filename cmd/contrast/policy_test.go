package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/internal/ocitest"
	"github.com/contrast-vm/contrast/layer"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/generate"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// busybox is the image of sampleYAML, which testLayout holds.
const busybox = "busybox:1.36"

// sampleYAML is a multi-document file as a user writes it: images by tag,
// commands given, a Service beside.
var sampleYAML = `# The shop.
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web # serves
        image: ` + busybox + `
        command: [httpd, -f]
        readinessProbe:
          exec: {command: [wget, -q, localhost]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: shop}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: migrate, image: '` + busybox + `', command: [sh, -c, 'echo done']}
`

func runCLIWithInput(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

var hashLine = regexp.MustCompile(`(?m)^([0-9a-f]{64}) (\S+)$`)

// testImage is the image in a test OCI layout: its manifest digest and the
// root hash of its one layer.
type testImage struct {
	dir, manifest, rootHash string
}

// testLayout writes an OCI layout holding busybox:1.36 as
// docker.io/library/busybox:1.36: one gzip layer with /etc/passwd and a
// shell, and a config for the host's architecture.
func testLayout(t *testing.T) testImage {
	t.Helper()
	l := ocitest.New(t)
	layerTar := ocitest.Tar(t, map[string]string{
		"bin/sh":     "#!/bin/true\n",
		"etc/group":  "root:x:0:\n",
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
	})
	m := l.Image(ocitest.Image{
		Config:  ocispec.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}},
		Layers:  []ocispec.Descriptor{l.Layer(layerTar, ocitest.Gzip)},
		DiffIDs: []digest.Digest{digest.FromBytes(layerTar)},
	})
	l.WriteIndexJSON(ocitest.Named(m, "docker.io/library/busybox:1.36"))

	// The root hash as the layer package converts the tar itself, apart
	// from the blob and layout reading the CLI does.
	out, err := os.CreateTemp(t.TempDir(), "layer")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	info, err := layer.Convert(bytes.NewReader(layerTar), out, nil)
	if err != nil {
		t.Fatal(err)
	}
	return testImage{dir: l.Dir, manifest: m.Digest.String(), rootHash: info.RootHash}
}

func TestPolicyGenerateAndHash(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "shop.yaml")
	if err := os.WriteFile(in, []byte(sampleYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	settings := filepath.Join(dir, "settings.yaml")
	if err := os.WriteFile(settings, []byte("containers:\n  web: {exec: [[sh]]}\nrequests: {ResizePty: false}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.yaml")
	img := testLayout(t)

	code, stdout, stderr := runCLI(t, "policy", "generate", "--oci-layout", img.dir, "--settings", settings, in, "-o", out)
	if code != 0 || stdout != "" {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	lines := hashLine.FindAllStringSubmatch(stderr, -1)
	if len(lines) != 2 || lines[0][2] != "Deployment/web" || lines[1][2] != "Job/migrate" {
		t.Fatalf("stderr does not list the two workloads' hashes:\n%s", stderr)
	}
	if strings.Contains(stderr, "warning") || strings.Contains(stderr, "layer 1/1") {
		t.Errorf("warnings or progress on a stderr that is no terminal:\n%s", stderr)
	}
	written, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(written), "image: "+busybox+"@"+img.manifest) {
		t.Errorf("the image is not pinned to the layout's digest %s:\n%s", img.manifest, written)
	}
	if !strings.HasPrefix(string(written), "# The shop.\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n") || !strings.Contains(string(written), "- name: web # serves") {
		t.Errorf("the output lost the Service or a comment:\n%s", written)
	}
	embedded, err := generate.Extract(written)
	if err != nil || len(embedded) != 2 {
		t.Fatalf("annotations in the output: %v, %v", embedded, err)
	}
	for i, e := range embedded {
		// The annotation is Kata's, carrying the minimal initdata
		// document; HOSTDATA is its SHA-256.
		sum := sha256.Sum256(e.Initdata.Raw())
		if e.Key != initdata.Annotation || hex.EncodeToString(sum[:]) != lines[i][1] {
			t.Errorf("%s/%s: stderr digest %s, annotation %s with digest %x", e.Kind, e.Name, lines[i][1], e.Key, sum)
		}
	}
	for _, e := range embedded {
		if !strings.Contains(string(e.Policy), `"layers":["`+img.rootHash+`"]`) {
			t.Errorf("%s/%s: the policy text lacks the root hash", e.Kind, e.Name)
		}
	}
	if !strings.Contains(string(embedded[0].Policy), `"exec":[["wget","-q","localhost"],["sh"]]`) || !strings.Contains(string(embedded[0].Policy), `"ResizePty":false`) {
		t.Errorf("the settings did not reach the policy")
	}

	// hash: one line per workload for YAML with several.
	code, stdout, stderr = runCLI(t, "policy", "hash", out)
	if code != 0 || stdout != lines[0][0]+"\n"+lines[1][0]+"\n" {
		t.Errorf("policy hash of the YAML: exit %d, stdout %q, stderr %q; want %q", code, stdout, stderr, lines[0][0]+"\n"+lines[1][0]+"\n")
	}
	// One workload: the bare hash, here from standard input.
	job := string(written[strings.Index(string(written), "apiVersion: batch/v1"):])
	code, stdout, _ = runCLIWithInput(t, job, "policy", "hash", "-")
	if code != 0 || stdout != lines[1][1]+"\n" {
		t.Errorf("policy hash of one workload: exit %d, %q; want %q", code, stdout, lines[1][1])
	}
	// A Rego module: wrapped into the minimal initdata document.
	rego := filepath.Join(dir, "policy.rego")
	if err := os.WriteFile(rego, embedded[1].Policy, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = runCLI(t, "policy", "hash", rego)
	if code != 0 || stdout != lines[1][1]+"\n" {
		t.Errorf("policy hash of the module: exit %d, %q; want %q", code, stdout, lines[1][1])
	}
	allow := policy.AllowAll()
	wrappedAllow, err := initdata.Wrap(allow)
	if err != nil {
		t.Fatal(err)
	}
	allowSum := sha256.Sum256(wrappedAllow)
	code, stdout, _ = runCLIWithInput(t, string(allow), "policy", "hash", "-")
	if code != 0 || stdout != hex.EncodeToString(allowSum[:])+"\n" {
		t.Errorf("policy hash of AllowAll: exit %d, %q", code, stdout)
	}
	// An initdata document: its bytes, as they are, under its algorithm,
	// cut to 32 bytes.
	kataDoc := "# a Kata user's document\nalgorithm = \"sha384\"\nversion = \"0.1.0\"\n\n[data]\n\"aa.toml\" = '''\n'''\n\"policy.rego\" = '''\n" + string(allow) + "'''\n"
	kataSum := sha512.Sum384([]byte(kataDoc))
	code, stdout, _ = runCLI(t, "policy", "hash", writeTemp(t, "initdata.toml", []byte(kataDoc)))
	if code != 0 || stdout != hex.EncodeToString(kataSum[:32])+"\n" {
		t.Errorf("policy hash of an initdata document: exit %d, %q; want %x", code, stdout, kataSum[:32])
	}

	// initdata: the document of one workload, byte for byte the one
	// whose digest stderr printed; several workloads are refused.
	code, stdout, _ = runCLIWithInput(t, job, "policy", "initdata", "-")
	if sum := sha256.Sum256([]byte(stdout)); code != 0 || hex.EncodeToString(sum[:]) != lines[1][1] || !strings.HasPrefix(stdout, "algorithm = \"sha256\"\n") {
		t.Errorf("policy initdata of one workload: exit %d, digest %x, want %s", code, sum, lines[1][1])
	}
	if code, _, stderr := runCLI(t, "policy", "initdata", out); code != 1 || !strings.Contains(stderr, "Deployment/web, Job/migrate") {
		t.Errorf("policy initdata of two workloads: exit %d, %q", code, stderr)
	}

	// Idempotent through the CLI, reading standard input.
	code, again, _ := runCLIWithInput(t, string(written), "policy", "generate", "--oci-layout", img.dir, "--settings", settings, "-")
	if code != 0 || again != string(written) {
		t.Errorf("second run: exit %d, output differs:\n%s", code, again)
	}

	// Several files are one stream of documents.
	code, stdout, stderr = runCLIWithInput(t, sampleYAML, "policy", "generate", "--oci-layout", img.dir, in, "-")
	if code != 0 || strings.Count(stdout, "\n---\n") != 5 || len(hashLine.FindAllString(stderr, -1)) != 4 {
		t.Errorf("two inputs: exit %d, %d separators, stderr:\n%s", code, strings.Count(stdout, "\n---\n"), stderr)
	}
}

func TestPolicyCLIErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: 'busybox:1.36'}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badInitdata := filepath.Join(dir, "initdata.toml")
	if err := os.WriteFile(badInitdata, []byte("algorithm = \"md5\"\nversion = \"0.1.0\"\n[data]\n\"policy.rego\" = \"package p\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	service := filepath.Join(dir, "service.yaml")
	if err := os.WriteFile(service, []byte("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	layout := testLayout(t)
	other := filepath.Join(dir, "other.yaml")
	if err := os.WriteFile(other, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: 'busybox:1.37'}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pinned := filepath.Join(dir, "pinned.yaml")
	if err := os.WriteFile(pinned, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: 'busybox@"+layout.manifest+"', command: [sh]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unknownSetting := filepath.Join(dir, "settings.json")
	if err := os.WriteFile(unknownSetting, []byte(`{"request": {}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"policy"}, 2, "usage: contrast policy <command>"},
		{[]string{"policy", "generate"}, 2, "no input"},
		{[]string{"policy", "generate", "-", "-"}, 2, "given 2 times"},
		{[]string{"policy", "generate", "--nope", "x"}, 2, "flag provided but not defined: -nope"},
		{[]string{"policy", "generate", "-h"}, 0, "usage: contrast policy generate [--settings FILE]"},
		{[]string{"policy", "generate", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml: no such file"},
		{[]string{"policy", "generate", bad}, 1, bad + ": document 2 (Pod p): container c: image busybox:1.36 is not pinned by digest"},
		{[]string{"policy", "generate", "--settings", unknownSetting, bad}, 1, `unknown field "request"`},
		{[]string{"policy", "generate", "--containerd-address", filepath.Join(dir, "no.sock"), bad}, 1, "no.sock"},
		{[]string{"policy", "generate", "--containerd-address", filepath.Join(dir, "no.sock"), "--oci-layout", dir, bad}, 2, "give one"},
		{[]string{"policy", "generate", "--oci-layout", dir, bad}, 1, "OCI layout " + dir},
		{[]string{"policy", "generate", "--oci-layout", layout.dir, other}, 1, other + ": document 1 (Pod p): container c: image busybox:1.37 is not in OCI layout " + layout.dir},
		{[]string{"policy", "generate", pinned}, 1, pinned + ": document 1 (Pod p): container c: image busybox@" + layout.manifest + ": no layer source"},
		{[]string{"policy", "hash"}, 2, "no FILE"},
		{[]string{"policy", "hash", "a", "b"}, 2, "one FILE at a time"},
		{[]string{"policy", "hash", service}, 1, "neither an initdata document, a Rego module"},
		{[]string{"policy", "hash", bad}, 1, "neither an initdata document, a Rego module"},
		{[]string{"policy", "hash", badInitdata}, 1, badInitdata + `: initdata document: unsupported algorithm "md5"`},
	} {
		code, _, stderr := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.inStderr) {
			t.Errorf("contrast %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.inStderr)
		}
	}
	if code, stdout, _ := runCLI(t, "policy", "help"); code != 0 || !strings.Contains(stdout, "generate ") || !strings.Contains(stdout, "hash ") {
		t.Errorf("contrast policy help: exit %d, stdout %q", code, stdout)
	}
	// A service-only file passes through with a warning.
	code, stdout, stderr := runCLI(t, "policy", "generate", service)
	if code != 0 || stdout != "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n" || !strings.Contains(stderr, "has no workload") {
		t.Errorf("service only: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestPolicyBinary runs the built command as a user does, with a pipe.
func TestPolicyBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	bin := filepath.Join(t.TempDir(), "contrast")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "policy", "generate", "--oci-layout", testLayout(t).dir, "-")
	cmd.Stdin = strings.NewReader(sampleYAML)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	hashes := hashLine.FindAllStringSubmatch(stderr.String(), -1)
	if len(hashes) != 2 {
		t.Fatalf("stderr:\n%s", stderr.String())
	}
	hash := exec.Command(bin, "policy", "hash", "-")
	hash.Stdin = bytes.NewReader(stdout.Bytes())
	got, err := hash.Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%s %s\n%s %s\n", hashes[0][1], "Deployment/web", hashes[1][1], "Job/migrate"); string(got) != want {
		t.Errorf("policy hash printed %q; want %q", got, want)
	}
}
