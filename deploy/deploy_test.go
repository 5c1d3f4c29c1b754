package deploy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/contrast-vm/contrast/shim"
)

// parse reads a multi-document manifest strictly into the API types.
func parse(t *testing.T, name string) (rcs []nodev1.RuntimeClass, dss []appsv1.DaemonSet) {
	t.Helper()
	data, err := Manifests.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	for i, doc := range bytes.Split(data, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s document %d: %v", name, i, err)
		}
		switch meta.Kind {
		case "RuntimeClass":
			var rc nodev1.RuntimeClass
			if err := yaml.UnmarshalStrict(doc, &rc); err != nil {
				t.Fatalf("%s document %d: %v", name, i, err)
			}
			rcs = append(rcs, rc)
		case "DaemonSet":
			var ds appsv1.DaemonSet
			if err := yaml.UnmarshalStrict(doc, &ds); err != nil {
				t.Fatalf("%s document %d: %v", name, i, err)
			}
			dss = append(dss, ds)
		default:
			t.Fatalf("%s document %d: unexpected kind %q", name, i, meta.Kind)
		}
	}
	return rcs, dss
}

// flagValue is the value of --name=value in args.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func TestManifests(t *testing.T) {
	for _, files := range [][]string{{"runtimeclass.yaml", "daemonset.yaml"}, {"contrast.yaml"}} {
		t.Run(strings.Join(files, "+"), func(t *testing.T) {
			var rcs []nodev1.RuntimeClass
			var dss []appsv1.DaemonSet
			for _, f := range files {
				r, d := parse(t, f)
				rcs, dss = append(rcs, r...), append(dss, d...)
			}
			if len(rcs) != 1 || len(dss) != 1 {
				t.Fatalf("%d RuntimeClasses and %d DaemonSets, want one each", len(rcs), len(dss))
			}
			checkPair(t, rcs[0], dss[0])
		})
	}
}

func checkPair(t *testing.T, rc nodev1.RuntimeClass, ds appsv1.DaemonSet) {
	t.Helper()
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("DaemonSet has %d containers, want the installer alone", len(pod.Containers))
	}
	c := pod.Containers[0]
	if alias := flagValue(c.Command, "alias"); alias != rc.Handler {
		t.Errorf("RuntimeClass handler %q, but the installer configures alias %q", rc.Handler, alias)
	}
	if len(c.Command) < 2 || c.Command[1] != "install" {
		t.Errorf("installer command %v does not install", c.Command)
	}
	def := shim.DefaultConfig().Hypervisor
	wantMem := resource.MustParse(fmt.Sprintf("%dMi", def.MemoryMiB))
	wantCPU := resource.MustParse(fmt.Sprint(def.VCPUs))
	if rc.Overhead == nil {
		t.Fatal("RuntimeClass has no overhead")
	}
	if m := rc.Overhead.PodFixed[corev1.ResourceMemory]; m.Cmp(wantMem) != 0 {
		t.Errorf("overhead memory %s, want the VM's %s", m.String(), wantMem.String())
	}
	if cpu := rc.Overhead.PodFixed[corev1.ResourceCPU]; cpu.Cmp(wantCPU) != 0 {
		t.Errorf("overhead cpu %s, want the VM's %s", cpu.String(), wantCPU.String())
	}
	if rc.Scheduling == nil || len(rc.Scheduling.NodeSelector) == 0 {
		t.Fatal("RuntimeClass schedules pods anywhere, also where no installer ran")
	}
	for k, v := range rc.Scheduling.NodeSelector {
		if pod.NodeSelector[k] != v {
			t.Errorf("RuntimeClass selects nodes %s=%s, the DaemonSet %v", k, v, pod.NodeSelector)
		}
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged || !pod.HostPID {
		t.Error("installer needs privileged and hostPID (nsenter into the host's PID 1)")
	}
	hostRoot := flagValue(c.Command, "host-root")
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == "/" && m.MountPath == hostRoot {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("host root / is not mounted at --host-root %q", hostRoot)
	}
	if ds.Spec.Selector == nil || len(ds.Spec.Selector.MatchLabels) == 0 {
		t.Fatal("DaemonSet has no selector")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("DaemonSet selector %s=%s does not match its pods' labels", k, v)
		}
	}
}

// TestAllInOne: contrast.yaml is the other manifests, so they cannot drift.
func TestAllInOne(t *testing.T) {
	var want bytes.Buffer
	for i, f := range []string{"runtimeclass.yaml", "daemonset.yaml"} {
		b, err := Manifests.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			want.WriteString("---\n")
		}
		want.Write(b)
	}
	got, err := Manifests.ReadFile("contrast.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Error("contrast.yaml is not runtimeclass.yaml --- daemonset.yaml: regenerate with\n  (cat runtimeclass.yaml; echo ---; cat daemonset.yaml) > contrast.yaml")
	}
}
