package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// markedImage is an image whose one layer holds, beside busybox, a file
// of a unique marker in a data block of its own, so that a test can find
// that block in the converted layer and change it.
const markedImage = "localhost/contrast-test/marked:1"

// importMarkedImage builds the marked image, imports it, and returns the
// marker (one 4 KiB block: the marker line repeated).
func importMarkedImage(t *testing.T, s *suite) string {
	t.Helper()
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	line := "contrast-integrity-marker-" + hex.EncodeToString(nonce) + "\n"
	marker := strings.Repeat(line, 4096/len(line)+1)[:4096]
	spec, err := harness.BusyboxSpec(markedImage, s.c.Tools().Busybox, []string{"sh"})
	if err != nil {
		t.Fatal(err)
	}
	spec.Files = append(spec.Files, harness.ImageFile{Path: "marker.txt", Mode: 0o644, Data: []byte(marker)})
	archive := filepath.Join(t.TempDir(), "marked.tar")
	if err := harness.WriteOCIArchive(archive, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.Ctr(s.ctx, "images", "import", "--local", archive); err != nil {
		t.Fatalf("import the marked image: %v", err)
	}
	return marker
}

// markedPodYAML reads the marker, says whether that worked, then sleeps.
const markedPodYAML = `apiVersion: v1
kind: Pod
metadata:
  name: marked
  namespace: default
spec:
  automountServiceAccountToken: false
  containers:
  - name: reader
    image: ` + markedImage + `
    command: ["sh", "-c", "if cat /marker.txt; then echo read-ok; else echo read-failed; fi; exec sleep 3600"]
`

// podFromPolicyFile reads a generated manifest and its policy's data.
func podFromPolicyFile(t *testing.T, path string) (harness.PodConfig, harness.ContainerConfig, policy.Data) {
	t.Helper()
	manifest, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pc, ctrs, err := harness.PodFromYAML(manifest, contrastHandler)
	if err != nil {
		t.Fatal(err)
	}
	doc, _, err := initdata.FromAnnotations(pc.Annotations)
	if err != nil || doc == nil {
		t.Fatalf("the pod's initdata: %v", err)
	}
	data, err := policy.ParseData(doc.Policy())
	if err != nil {
		t.Fatal(err)
	}
	return pc, ctrs[0], data
}

// TestImageIntegrity: a container's image reaches the pod VM only as
// dm-verity layers whose root hashes the policy pins. A pod whose policy
// pins its image runs; a byte changed in the host's cached layer never
// reaches the container as changed data; a policy pinning another image's
// layers refuses the container, naming the rule.
func TestImageIntegrity(t *testing.T) {
	cache := t.TempDir()
	s := newSuite(t, handlerSpec{name: contrastHandler, testImage: true, edit: func(c *harness.ShimConfig) {
		c.DefaultPolicy = "deny-all"
		c.LayerCache = cache // this test corrupts it
	}})
	marker := importMarkedImage(t, s)

	out := filepath.Join(t.TempDir(), "marked.policy.yaml")
	generatePolicyFile(t, s, markedPodYAML, out)
	podCfg, reader, data := podFromPolicyFile(t, out)
	pinned := data.Containers["reader"].Layers
	if len(pinned) != 1 || len(pinned[0]) != 64 {
		t.Fatalf("the generated policy pins layers %q for the one-layer marked image; want one root hash", pinned)
	}
	t.Logf("policy pins layer root hash %s", pinned[0])

	t.Run("pinned-image-runs", func(t *testing.T) {
		before := s.snapshot(t)
		pod := s.runPodWith(t, podCfg)
		c := s.startWith(t, pod, reader)
		trace := s.trace(t, pod, c)
		waitLog(t, s, c, "read-ok", time.Minute)
		logs := s.logs(t, c)
		if !strings.Contains(logs, marker[:64]) {
			t.Errorf("the container read %q, want the marker", logs[:min(len(logs), 200)])
		}
		s.removeContainer(t, c)
		s.removePod(t, pod, trace, before)
	})

	t.Run("other-image-refused", func(t *testing.T) {
		// The same policy, but pinning the busybox image's layer for the
		// container: what a policy for another image says.
		bbOut := filepath.Join(t.TempDir(), "busybox.policy.yaml")
		generatePolicyFile(t, s, strings.ReplaceAll(markedPodYAML, markedImage, harness.BusyboxImage), bbOut)
		_, _, bbData := podFromPolicyFile(t, bbOut)
		other := data
		other.Containers = map[string]policy.Container{}
		for name, c := range data.Containers {
			c.Layers = bbData.Containers["reader"].Layers
			other.Containers[name] = c
		}
		module, err := policy.Build(other)
		if err != nil {
			t.Fatal(err)
		}
		pc := podCfg
		pc.Annotations = map[string]string{policy.Annotation: policy.EncodeAnnotation(module)}
		before := s.snapshot(t)
		pod := s.runPodWith(t, pc)
		trace := s.trace(t, pod)
		c, err := s.cri.CreateContainer(s.ctx, pod, reader)
		if err == nil {
			err = s.cri.StartContainer(s.ctx, c.ID)
		}
		if err == nil {
			t.Fatal("a container whose image layers the policy does not pin was created")
		}
		msg := cmdErrText(err)
		t.Logf("refused: %s", msg)
		if !containsAny(msg, "create_container.layers") || !containsAny(msg, pinned[0][:12]) {
			t.Errorf("the refusal does not name the layer rule and the offered root hash %s", pinned[0])
		}
		if c != nil {
			_ = s.cri.RemoveContainer(s.ctx, c.ID)
		}
		s.removePod(t, pod, trace, before)
	})

	t.Run("changed-layer-never-read", func(t *testing.T) {
		img := cachedLayerHolding(t, cache, marker)
		flipMarkerByte(t, img, marker)
		pod := s.runPodWith(t, podCfg)
		c, err := s.cri.CreateContainer(s.ctx, pod, reader)
		if err == nil {
			err = s.cri.StartContainer(s.ctx, c.ID)
		}
		if err != nil {
			msg := cmdErrText(err)
			t.Logf("the container did not start: %s", msg)
			for _, p := range tamperedLayerProblems(msg, "") {
				t.Error(p)
			}
			return
		}
		waitLogMatch(t, s, c, regexp.MustCompile(`read-(ok|failed)`), time.Minute)
		stdout, stderr, err := s.cri.Logs(s.ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		logs := stdout + stderr
		t.Logf("reader's log: %q", logs[:min(len(logs), 300)])
		for _, p := range tamperedLayerProblems("", logs) {
			t.Error(p)
		}
	})
}

// tamperedLayerProblems judges what became of a container whose layer had a
// byte changed on the host: it either did not start, with startErr, or ran
// the reader and logged logs. The one right outcome of each is the
// integrity refusal: a start refused by an I/O error through dm-verity that
// names the layer, or a reader that got an I/O error instead of the data.
func tamperedLayerProblems(startErr, logs string) []string {
	var problems []string
	if startErr != "" {
		if !containsAny(startErr, "layer sha256:") || !containsAny(strings.ToLower(startErr), "input/output error", "i/o error") {
			problems = append(problems, "the container failed to start for another reason than the changed layer's integrity: "+startErr)
		}
		return problems
	}
	if strings.Contains(logs, "read-ok") {
		problems = append(problems, "cat of the changed file succeeded")
	}
	if strings.Contains(logs, "contrast-integrity-marker") {
		problems = append(problems, "the container read data of the changed block")
	}
	if !containsAny(strings.ToLower(logs), "i/o error", "input/output error") {
		problems = append(problems, fmt.Sprintf("the reader's error is not dm-verity's I/O error: %q", logs))
	}
	return problems
}

// TestTamperedLayerProblems: the verdict of the changed-layer test fails
// for every wrong outcome, including a start refused for another reason.
func TestTamperedLayerProblems(t *testing.T) {
	for _, c := range []struct {
		name, startErr, logs string
		ok                   bool
	}{
		{name: "read got EIO", logs: "cat: can't open '/data/marker': I/O error\nread-failed\n", ok: true},
		{name: "start refused by dm-verity", startErr: "layer sha256:4f2a: mount ext4 from /dev/dm-3 (serial l1) at /run/layers/x: input/output error", ok: true},
		{name: "read the data", logs: "contrast-integrity-marker-00ff\nread-ok\n"},
		{name: "read failed otherwise", logs: "cat: can't open '/data/marker': No such file or directory\nread-failed\n"},
		{name: "start refused by the policy", startErr: "create_container.layers: root hash 4f2a... is not pinned"},
		{name: "start refused for a missing image", startErr: "failed to get image: not found"},
		{name: "start refused by another layer error", startErr: "layer sha256:4f2a: device: no disk with serial l1"},
		{name: "start refused by a verity setup error", startErr: "layer sha256:4f2a: open dm-verity over device /dev/vdb (serial l1): no such device"},
	} {
		if got := tamperedLayerProblems(c.startErr, c.logs); (len(got) == 0) != c.ok {
			t.Errorf("%s: problems %q, want ok=%v", c.name, got, c.ok)
		}
	}
}

// cachedLayerHolding returns the converted layer file in the cache that
// holds the marker block.
func cachedLayerHolding(t *testing.T, cache, marker string) string {
	t.Helper()
	var found []string
	_ = filepath.WalkDir(cache, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".img") {
			return err
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(marker)) {
			found = append(found, path)
		}
		return nil
	})
	if len(found) != 1 {
		t.Fatalf("want one cached layer in %s holding the marker (pinned-image-runs fills the cache), found %q", cache, found)
	}
	return found[0]
}

// flipMarkerByte changes one byte of the marker block in a layer file.
func flipMarkerByte(t *testing.T, path, marker string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(marker))
	b[i+100] ^= 0x01
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped byte %d of %s", i+100, path)
}
