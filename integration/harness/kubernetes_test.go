package harness

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/contrast-vm/contrast/installer"
	"github.com/contrast-vm/contrast/shim"
)

func TestNodeInstallerManifest(t *testing.T) {
	manifest, err := os.ReadFile("../../deploy/contrast.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{Dir: "/tmp/c123456", ConfigToml: "/tmp/c123456/containerd.toml", Socket: "/tmp/c123456/c.sock"}
	sup := &Supervisor{Script: "/tmp/c123456/restart-containerd"}
	out, err := NodeInstallerManifest(c, sup, manifest, map[string]string{"rev": "2"})
	if err != nil {
		t.Fatal(err)
	}
	docs := bytes.Split(out, []byte("\n---\n"))
	if len(docs) != 2 || !bytes.Contains(docs[0], []byte("kind: RuntimeClass")) {
		t.Fatalf("want the RuntimeClass as it is and the DaemonSet:\n%s", out)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(docs[1], &ds); err != nil {
		t.Fatal(err)
	}
	ctr := ds.Spec.Template.Spec.Containers[0]
	args := strings.Join(ctr.Command, " ")
	for _, want := range []string{
		"install", "--host-root=/host", "--alias=contrast-cc", "--stay",
		"--prefix=/tmp/c123456/opt/contrast", "--containerd-config=/tmp/c123456/containerd.toml",
		"--drop-in-dir=/tmp/c123456/conf.d", "--cri-socket=/tmp/c123456/c.sock",
		"--restart-cmd=/bin/sh /host/tmp/c123456/restart-containerd",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("installer command %q lacks %q", args, want)
		}
	}
	if ctr.Image != InstallerImage || ctr.ImagePullPolicy != "Never" || ds.Spec.Template.Annotations["rev"] != "2" {
		t.Errorf("image %s pull %s annotations %v", ctr.Image, ctr.ImagePullPolicy, ds.Spec.Template.Annotations)
	}
}

// TestNodeRuntimeConfigParses renders deploy/runtime.toml with the test
// node's settings as the installer would and parses it as the shim does.
func TestNodeRuntimeConfigParses(t *testing.T) {
	tmpl, err := os.ReadFile("../../deploy/runtime.toml")
	if err != nil {
		t.Fatal(err)
	}
	tp, err := template.New("runtime").Parse(string(TestNodeRuntimeConfig(tmpl, "/tmp/c123456")))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tp.Execute(&b, installer.TemplateData{Handler: "contrast-cc-x", Dir: "/opt/x", Shim: "/opt/x/shim", Kernel: "/opt/x/kernel", RootDisk: "/opt/x/rootfs.img"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := shim.ParseConfig(b.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if cfg.StateDir != "/tmp/c123456" || cfg.SocketDir != ShimSocketDir("/tmp/c123456") || cfg.Layers.CacheDir != DefaultLayerCache() || cfg.Policy.Default != "deny-all" {
		t.Errorf("state %s layers %s policy %s", cfg.StateDir, cfg.Layers.CacheDir, cfg.Policy.Default)
	}
}

func TestPKIIssues(t *testing.T) {
	p, err := newPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	crt, _, err := p.issue(certSpec{name: "x", cn: "system:node:n", orgs: []string{"system:nodes"}, client: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("issued certificate does not verify: %v", err)
	}
	if cert.Subject.CommonName != "system:node:n" || cert.Subject.Organization[0] != "system:nodes" {
		t.Errorf("subject %v", cert.Subject)
	}
	if _, err := os.Stat(filepath.Join(p.dir, "x.key")); err != nil {
		t.Error(err)
	}
}
