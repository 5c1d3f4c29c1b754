package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/contrast-vm/contrast/integration/harness"
)

const rawBlockMarker = "contrast-raw-block-marker"

// rawBlockPodYAML is a pod whose container writes a marker onto its raw
// block volume (a PersistentVolumeClaim in block mode) at /dev/xvda.
const rawBlockPodYAML = `apiVersion: v1
kind: Pod
metadata:
  name: raw-block
  namespace: default
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: app
    image: ` + harness.BusyboxImage + `
    command: ["sh", "-c", "echo ` + rawBlockMarker + ` | dd of=/dev/xvda bs=512 seek=1 conv=notrunc,fsync"]
    volumeDevices:
    - {name: data, devicePath: /dev/xvda}
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: data
`

// TestRawBlockVolume: a container of a pod under its generated policy gets
// a host block device (a loop device on a sparse file, as the kubelet hands
// a block-mode volume to CRI) at its devicePath, and what it writes there
// is on the host device; a device at a path the policy does not name is
// denied, naming the path. Both containerd versions: each writes the
// device into the spec itself.
func TestRawBlockVolume(t *testing.T) {
	versions(t, rawBlockVolume)
}

func rawBlockVolume(t *testing.T, v harness.Version) {
	s := newSuiteVersion(t, v, handlerSpec{name: contrastHandler, testImage: true, edit: func(c *harness.ShimConfig) { c.DefaultPolicy = "deny-all" }})
	loop, backing := rawBlockLoop(t)

	out := filepath.Join(t.TempDir(), "pod.policy.yaml")
	generatePolicyFile(t, s, rawBlockPodYAML, out)
	podCfg, ctrs := rawBlockPodConfig(t, out)
	if len(ctrs) != 1 {
		t.Fatalf("generated manifest's containers %+v: want one", ctrs)
	}
	// What the kubelet sends for the volumeDevice: the volume's device.
	app := ctrs[0]
	app.Devices = []harness.Device{{ContainerPath: "/dev/xvda", HostPath: loop, Permissions: "mrw"}}

	before := s.snapshot(t)
	pod := s.runPodWith(t, podCfg)
	c := s.startWith(t, pod, app)
	trace := s.trace(t, pod, c)
	if st := s.waitExited(t, c, 2*time.Minute); st.ExitCode != 0 {
		t.Fatalf("container exited %d, want 0; its log:\n%s", st.ExitCode, s.logs(t, c))
	}
	data, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if want := rawBlockMarker + "\n"; !bytes.Equal(data[512:512+len(want)], []byte(want)) {
		t.Errorf("the loop device's backing file at 512 holds %q, want %q", data[512:512+len(want)], want)
	}
	if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
		t.Fatalf("crictl rm: %v", err)
	}

	// The same container with the device at a path the policy does not name.
	app.Devices[0].ContainerPath = "/dev/xvdb"
	// CRI asks the runtime only at the start.
	denied, err := s.cri.CreateContainer(s.ctx, pod, app)
	if err != nil {
		t.Fatalf("crictl create: %v", err)
	}
	if err := s.cri.StartContainer(s.ctx, denied.ID); err == nil {
		t.Errorf("a raw block volume at /dev/xvdb was allowed")
	} else if msg := cmdErrText(err); !strings.Contains(msg, "policy denies CreateContainer") || !strings.Contains(msg, "/dev/xvdb") {
		t.Errorf("start with a raw block volume at /dev/xvdb: %s, want the policy's denial naming the path", msg)
	}
	s.removePod(t, pod, trace, before)
}

// rawBlockLoop is a loop device on a sparse file, detached at the end.
func rawBlockLoop(t *testing.T) (dev, backing string) {
	backing = filepath.Join(t.TempDir(), "volume.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 8<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v: %s", dev, err, out)
		}
	})
	return dev, backing
}

// rawBlockPodConfig reads the generated manifest as the harness runs it:
// the harness does not emulate volumes, so the claim and the
// volumeDevices go (the test passes the device itself), the policy
// annotation stays.
func rawBlockPodConfig(t *testing.T, manifest string) (harness.PodConfig, []harness.ContainerConfig) {
	generated, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.Unmarshal(generated, &pod); err != nil {
		t.Fatalf("generated manifest: %v", err)
	}
	pod.Spec.Volumes = nil
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].VolumeDevices = nil
	}
	stripped, err := yaml.Marshal(&pod)
	if err != nil {
		t.Fatal(err)
	}
	podCfg, ctrs, err := harness.PodFromYAML(stripped, contrastHandler)
	if err != nil {
		t.Fatal(err)
	}
	return podCfg, ctrs
}
