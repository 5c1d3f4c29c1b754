package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestKubeCluster brings up the single-node cluster (kine, apiserver,
// controller manager, scheduler, kubelet on the private containerd), runs
// a runc pod and a contrast-cc pod side by side through the kubelet, tears
// everything down and checks that the host is as it was: no mount,
// network link, iptables rule, kubelet sysctl or file in the places a node
// writes by default changed.
func TestKubeCluster(t *testing.T) {
	before, err := harness.ReadHostState()
	if err != nil {
		t.Fatal(err)
	}
	var hex string
	t.Run("cluster", func(t *testing.T) {
		ks := newKubeSuite(t, handlerSpec{name: contrastHandler})
		hex = instanceHex(ks.c.Dir)
		for _, rc := range kubeHandlers {
			name := "hello-" + rc
			ks.apply(t, podSpec(name, rc, busybox("hello", "echo hello from $(hostname); sleep 3600")))
		}
		for _, rc := range kubeHandlers {
			name := "hello-" + rc
			ks.wait(t, "pod/"+name, "condition=Ready", 3*time.Minute)
			ks.waitLogs(t, "hello from "+name, name)
		}
		// The pods run in their runtimes: a VM monitor for contrast-cc.
		ps, err := ks.c.InstanceProcesses()
		if err != nil {
			t.Fatal(err)
		}
		vms := 0
		for _, p := range ps {
			if strings.Contains(p.Cmdline, "qemu-system") {
				vms++
			}
		}
		if vms != 1 {
			t.Errorf("%d VM monitors run for one contrast-cc pod and one runc pod", vms)
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "pod", "hello-"+rc, "--wait=true", "--timeout=2m")
		}
	})
	if hex == "" {
		return
	}
	after, err := harness.ReadHostState()
	if err != nil {
		t.Fatal(err)
	}
	if changed := after.ChangedSince(before, hex); len(changed) > 0 {
		t.Errorf("the cluster changed the host:\n%s", strings.Join(changed, "\n"))
	}
}
