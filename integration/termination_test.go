package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// terminationPodYAML is a pod whose container leaves a termination message
// in the file the kubelet mounts at /dev/termination-log, then exits.
const terminationPodYAML = `apiVersion: v1
kind: Pod
metadata:
  name: termination-message
  namespace: default
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: app
    image: ` + harness.BusyboxImage + `
    command: ["sh", "-c", "echo written in the VM >/dev/termination-log; exit 3"]
`

// TestTerminationMessage: what a container of a pod under its generated
// policy writes to its termination-message file is in the kubelet's file
// on the host once CRI reports the container exited, which is when the
// kubelet reads it (state.terminated.message).
func TestTerminationMessage(t *testing.T) {
	s := newSuite(t, handlerSpec{name: contrastHandler, testImage: true, edit: func(c *harness.ShimConfig) { c.DefaultPolicy = "deny-all" }})
	out := filepath.Join(t.TempDir(), "pod.policy.yaml")
	generatePolicyFile(t, s, terminationPodYAML, out)
	generated, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	podCfg, ctrs, err := harness.PodFromYAML(generated, contrastHandler)
	if err != nil {
		t.Fatal(err)
	}
	if len(ctrs) != 1 {
		t.Fatalf("generated manifest's containers %+v: want one", ctrs)
	}
	before := s.snapshot(t)
	pod := s.runPodWith(t, podCfg)
	c := s.startWith(t, pod, ctrs[0])
	trace := s.trace(t, pod, c)
	if st := s.waitExited(t, c, 2*time.Minute); st.ExitCode != 3 {
		t.Errorf("container exited %d, want 3", st.ExitCode)
	}
	// The harness's kubelet stand-in made one file for the container.
	files, err := filepath.Glob(filepath.Join(s.c.KubeletRoot(), "pods", pod.UID, "containers", ctrs[0].Name, "*"))
	if err != nil || len(files) != 1 {
		t.Fatalf("termination-message files of the container: %v %v, want one", files, err)
	}
	msg, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(msg)) != "written in the VM" {
		t.Errorf("host's termination-message file holds %q, want what the container wrote in the VM", msg)
	}
	if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
		t.Errorf("crictl rm: %v", err)
	}
	s.removePod(t, pod, trace, before)
}
