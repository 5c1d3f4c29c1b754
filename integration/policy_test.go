package integration

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// policyPodYAML is the pod the policy tests generate a policy for. Its
// liveness probe is the one command the policy lets the host exec.
const policyPodYAML = `apiVersion: v1
kind: Pod
metadata:
  name: policy-demo
  namespace: default
spec:
  automountServiceAccountToken: false
  containers:
  - name: app
    image: ` + harness.BusyboxImage + `
    command: ["sh", "-c", "echo policy-ok; exec sleep 3600"]
    env:
    - name: GREETING
      value: hello
    livenessProbe:
      exec:
        command: ["cat", "/etc/hostname"]
`

// hostDataForger writes a QEMU wrapper that launches the VM with other host
// data than the shim asked for: what a malicious host could do. The
// simulated SNP device then reports that HOSTDATA.
func hostDataForger(t *testing.T) string {
	t.Helper()
	script := filepath.Join(t.TempDir(), "qemu-forge-hostdata")
	forged := strings.Repeat("f", 64)
	body := `#!/bin/bash
# Launches QEMU with forged host data (integration test of the policy binding).
args=()
for a in "$@"; do
  case $a in name=opt/io.contrast/hostdata,string=*) a="name=opt/io.contrast/hostdata,string=` + forged + `";; esac
  args+=("$a")
done
exec /usr/bin/qemu-system-x86_64 "${args[@]}"
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

// TestPolicy runs pods under policies generated from their YAML, on the test
// image whose simulated SNP device reports the launch's host data, with
// containerd 2.4 and 1.7 (whose requests differ: see
// policy/generate/testdata/containerd): a pod
// within its policy runs; what the policy does not allow is denied with a
// reason crictl shows; a policy that is not the launched one never installs.
func TestPolicy(t *testing.T) {
	versions(t, testPolicy)
}

func testPolicy(t *testing.T, v harness.Version) {
	denyAll := func(c *harness.ShimConfig) { c.DefaultPolicy = "deny-all" }
	forger := hostDataForger(t)
	s := newSuiteVersion(t, v,
		handlerSpec{name: contrastHandler, testImage: true, edit: denyAll},
		handlerSpec{name: "contrast-forged", testImage: true, edit: func(c *harness.ShimConfig) {
			denyAll(c)
			c.Binary = forger
		}},
	)

	// Generate the policy as a user would: the CLI, reading the image from
	// containerd's store.
	out := filepath.Join(t.TempDir(), "pod.policy.yaml")
	generatePolicyFile(t, s, policyPodYAML, out)
	generated, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("generated manifest (policy annotation cut):\n%s", cutAnnotation(string(generated)))
	podCfg, ctrs, err := harness.PodFromYAML(generated, contrastHandler)
	if err != nil {
		t.Fatal(err)
	}
	if podCfg.Annotations[initdata.Annotation] == "" || podCfg.Annotations[policy.Annotation] != "" {
		t.Fatalf("generated manifest has no %s annotation, or a bare policy", initdata.Annotation)
	}
	if len(ctrs) != 1 || !strings.Contains(ctrs[0].Image, "@sha256:") {
		t.Fatalf("generated manifest's containers %+v: want one, image pinned by digest", ctrs)
	}
	app := ctrs[0]

	t.Run("no-policy-refused", func(t *testing.T) {
		before := s.snapshot(t)
		_, err := s.cri.RunPod(s.ctx, harness.PodConfig{Name: "no-policy", Handler: contrastHandler})
		if err == nil {
			t.Fatal("runp of a pod without a policy succeeded under the deny-all default")
		}
		msg := cmdErrText(err)
		t.Logf("runp: %s", msg)
		if !containsAny(msg, "carries no policy") || !containsAny(msg, "deny-all") {
			t.Errorf("error does not say the pod has no policy and the default is deny-all")
		}
		s.expectNoLeftovers(t, "refused pod", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
	})

	t.Run("allowed", func(t *testing.T) {
		before := s.snapshot(t)
		pod := s.runPodWith(t, podCfg)
		c := s.startWith(t, pod, app)
		trace := s.trace(t, pod, c)
		waitLog(t, s, c, "policy-ok", 30*time.Second)

		res, err := s.cri.Exec(s.ctx, c.ID, true, "cat", "/etc/hostname")
		if err != nil || res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != podCfg.Name {
			t.Errorf("exec of the probe's command: %+v, %v; want the hostname %s", res, err, podCfg.Name)
		}
		res, err = s.cri.Exec(s.ctx, c.ID, true, "id")
		if err == nil {
			t.Errorf("exec of id, which the policy does not list, succeeded: %+v", res)
		} else {
			msg := cmdErrText(err)
			t.Logf("denied exec: %s", msg)
			if !containsAny(msg, "ExecProcess") || !containsAny(msg, "polic") {
				t.Errorf("exec denial does not name the request and the policy")
			}
		}
		// The pod carries no stdin: writing it is not allowed, so attach -i
		// has nothing to attach to; logs are readable (checked above).
		s.removeContainer(t, c)
		s.removePod(t, pod, trace, before)
	})

	t.Run("changed-command-denied", func(t *testing.T) {
		before := s.snapshot(t)
		pc := podCfg
		pc.Name = podCfg.Name // the hostname the policy pins
		pod := s.runPodWith(t, pc)
		trace := s.trace(t, pod)
		tampered := app
		tampered.Command = []string{"sh", "-c", "echo tampered; exec sleep 3600"}
		// CRI creates the runtime's task, so the container in the VM, at
		// `crictl start`; `crictl create` only records it.
		c, err := s.cri.CreateContainer(s.ctx, pod, tampered)
		if err == nil {
			err = s.cri.StartContainer(s.ctx, c.ID)
		}
		if err == nil {
			t.Fatal("a container whose command differs from the policy's was created and started")
		}
		msg := cmdErrText(err)
		t.Logf("denied create: %s", msg)
		if !containsAny(msg, "CreateContainer") || !containsAny(msg, "args", "command") || !containsAny(msg, "tampered") {
			t.Errorf("create denial does not name the request, the rule and the command")
		}
		s.removePod(t, pod, trace, before)
	})

	// A policy whose settings forbid the pod's subnet: the host's
	// ConfigureNetwork is denied, so the pod never starts, and nothing of
	// it stays, in the sandbox's network namespace neither.
	t.Run("network-denied", func(t *testing.T) {
		before := s.snapshot(t)
		settings := filepath.Join(t.TempDir(), "settings.yaml")
		if err := os.WriteFile(settings, []byte("network:\n  forbiddenPrefixes: ["+s.c.Subnet+"]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "pod.policy.yaml")
		generatePolicyFile(t, s, policyPodYAML, out, "--settings", settings)
		manifest, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		pc, _, err := harness.PodFromYAML(manifest, contrastHandler)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.cri.RunPod(s.ctx, pc)
		if err == nil {
			t.Fatalf("runp succeeded although the policy forbids the pod's subnet %s", s.c.Subnet)
		}
		msg := cmdErrText(err)
		t.Logf("runp: %s", msg)
		if !containsAny(msg, "policy denies ConfigureNetwork") || !containsAny(msg, "configure_network.interface_address") {
			t.Errorf("error does not name the ConfigureNetwork request and the address rule")
		}
		s.expectNoLeftovers(t, "refused pod", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
	})

	// A pod written for Kata: its policy inside a hand-written SHA-384
	// initdata document under Kata's annotation. It runs under that
	// policy, bound to the document's digest cut to 32 bytes.
	module := podPolicyModule(t, podCfg)
	kataAnnotation, kataHostData := kataInitdata(t, module)
	kataCfg := podCfg
	kataCfg.Annotations = map[string]string{initdata.Annotation: kataAnnotation}
	t.Run("kata-initdata", func(t *testing.T) {
		before := s.snapshot(t)
		pod := s.runPodWith(t, kataCfg)
		c := s.startWith(t, pod, app)
		trace := s.trace(t, pod, c)
		waitLog(t, s, c, "policy-ok", 30*time.Second)
		status, err := os.ReadFile(filepath.Join(podstate.Dir(s.c.ShimState, podstate.KubernetesNS, pod.ID), podstate.PolicyStatusFile))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("policy status: %s", status)
		var st struct {
			Source    string `json:"source"`
			HostData  string `json:"host_data"`
			Algorithm string `json:"initdata_algorithm"`
			TEE       string `json:"tee"`
		}
		if err := json.Unmarshal(status, &st); err != nil {
			t.Fatal(err)
		}
		if st.Source != initdata.Annotation || st.HostData != kataHostData || st.Algorithm != "sha384" || st.TEE != "snp-simulated" {
			t.Errorf("policy status %+v: want source %s, host_data %s (sha384sum), sha384, snp-simulated", st, initdata.Annotation, kataHostData)
		}
		res, err := s.cri.Exec(s.ctx, c.ID, true, "cat", "/etc/hostname")
		if err != nil || res.ExitCode != 0 {
			t.Errorf("exec of the probe's command: %+v, %v", res, err)
		}
		res, err = s.cri.Exec(s.ctx, c.ID, true, "id")
		if err == nil {
			t.Errorf("exec of id, which the policy in the initdata does not list, succeeded: %+v", res)
		} else if msg := cmdErrText(err); !containsAny(msg, "ExecProcess") || !containsAny(msg, "polic") {
			t.Errorf("exec denial does not name the request and the policy: %s", msg)
		}
		s.removeContainer(t, c)
		s.removePod(t, pod, trace, before)
	})

	// The same document on a VM launched with other host data: the
	// agent refuses it, naming both, and nothing of the pod stays.
	t.Run("kata-initdata-mismatch", func(t *testing.T) {
		before := s.snapshot(t)
		pc := kataCfg
		pc.Handler = "contrast-forged"
		_, err := s.cri.RunPod(s.ctx, pc)
		if err == nil {
			t.Fatal("runp succeeded although the VM was launched with other host data than the initdata digest")
		}
		msg := cmdErrText(err)
		t.Logf("runp: %s", msg)
		if !containsAny(msg, "initdata document's sha384 digest is "+kataHostData) || !containsAny(msg, "(HOSTDATA "+kataHostData+")") ||
			!containsAny(msg, "launched with HOSTDATA "+strings.Repeat("f", 64)) {
			t.Errorf("error does not name the initdata digest %s and the launched HOSTDATA", kataHostData)
		}
		s.expectNoLeftovers(t, "refused pod", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
	})

	// A bare policy beside the initdata: which one the pod meant is not
	// the runtime's to guess.
	t.Run("initdata-and-bare-policy", func(t *testing.T) {
		before := s.snapshot(t)
		pc := kataCfg
		pc.Annotations = map[string]string{initdata.Annotation: kataAnnotation, policy.Annotation: policy.EncodeAnnotation(module)}
		_, err := s.cri.RunPod(s.ctx, pc)
		if err == nil {
			t.Fatal("runp succeeded with both an initdata document and a bare policy")
		}
		msg := cmdErrText(err)
		t.Logf("runp: %s", msg)
		if !containsAny(msg, "both set") {
			t.Errorf("error does not say both annotations are set")
		}
		s.expectNoLeftovers(t, "refused pod", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
	})

	t.Run("hostdata-mismatch", func(t *testing.T) {
		before := s.snapshot(t)
		pc := podCfg
		pc.Handler = "contrast-forged"
		_, err := s.cri.RunPod(s.ctx, pc)
		if err == nil {
			t.Fatal("runp succeeded although the VM was launched with other host data than the policy's hash")
		}
		msg := cmdErrText(err)
		t.Logf("runp: %s", msg)
		digest := initdataDigestOf(t, podCfg.Annotations[initdata.Annotation])
		if !containsAny(msg, "HOSTDATA") || !containsAny(msg, "initdata document's sha256 digest is "+digest) || !containsAny(msg, strings.Repeat("f", 64)) {
			t.Errorf("error does not name HOSTDATA, the initdata digest %s and the launched host data", digest)
		}
		s.expectNoLeftovers(t, "refused pod", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
	})
}

// initdataDigestOf decodes an initdata annotation value and returns its
// document's digest in hex.
func initdataDigestOf(t *testing.T, annotation string) string {
	t.Helper()
	doc, _, err := initdata.FromAnnotations(map[string]string{initdata.Annotation: annotation})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(doc.Digest())
}

// kataInitdata writes an initdata document as a Kata user does by hand
// (SHA-384, configuration for an attestation agent and a data hub beside
// the policy) and encodes it with gzip and base64 as Kata's documentation
// does (`gzip -c | base64 -w0`): other tools than the runtime's. It
// returns the annotation value and HOSTDATA as `sha384sum` computes it
// (the first 64 hex digits).
func kataInitdata(t *testing.T, module []byte) (annotation, hostData string) {
	t.Helper()
	doc := filepath.Join(t.TempDir(), "initdata.toml")
	content := "algorithm = \"sha384\"\nversion = \"0.1.0\"\n\n[data]\n" +
		"\"aa.toml\" = '''\n[token_configs]\n[token_configs.kbs]\nurl = \"http://kbs.invalid:8080\"\n'''\n\n" +
		"\"cdh.toml\" = '''\nsocket = \"unix:///run/confidential-containers/cdh.sock\"\n'''\n\n" +
		"\"policy.rego\" = '''\n" + string(module) + "'''\n"
	if err := os.WriteFile(doc, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	enc, err := exec.Command("sh", "-c", "gzip -c < \"$1\" | base64 -w0", "sh", doc).Output()
	if err != nil {
		t.Fatalf("gzip | base64: %v", err)
	}
	sum, err := exec.Command("sha384sum", doc).Output()
	if err != nil {
		t.Fatalf("sha384sum: %v", err)
	}
	return string(enc), string(sum[:64])
}

// podPolicyModule is the policy inside a pod's initdata annotation.
func podPolicyModule(t *testing.T, pc harness.PodConfig) []byte {
	t.Helper()
	doc, _, err := initdata.FromAnnotations(pc.Annotations)
	if err != nil || doc == nil {
		t.Fatalf("pod's initdata: %v", err)
	}
	return doc.Policy()
}

// cutAnnotation shortens the base64 initdata in a manifest for the test log.
func cutAnnotation(manifest string) string {
	var b strings.Builder
	for _, line := range strings.Split(manifest, "\n") {
		if strings.Contains(line, initdata.Annotation) && len(line) > 120 {
			line = line[:120] + fmt.Sprintf("... (%d bytes)", len(line))
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// lockedPodYAML is a pod with the security context a hardened workload
// has: ids, supplemental groups, capabilities dropped but one,
// no_new_privs, a read-only root, the RuntimeDefault seccomp profile, and
// PATH and GREETING overriding the image's ENV. Its container prints what the kernel
// says of its process, then sleeps.
const lockedPodYAML = `apiVersion: v1
kind: Pod
metadata:
  name: locked
  namespace: default
spec:
  automountServiceAccountToken: false
  securityContext:
    supplementalGroups: [4000]
  containers:
  - name: app
    image: ` + harness.BusyboxImage + `
    command: ["sh", "-c", "grep -E '^(Uid|Gid|Groups|Cap|NoNewPrivs|Seccomp)' /proc/self/status; echo PATH=$PATH; echo GREETING=$GREETING; echo status-done; exec sleep 3600"]
    env:
    - {name: PATH, value: "/bin:/sbin"}
    - {name: GREETING, value: "from the yaml"}
    securityContext:
      runAsUser: 1000
      runAsGroup: 3000
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
      seccompProfile: {type: RuntimeDefault}
`

// lockedStatus is what the container of lockedPodYAML must print: the
// policy's uid, gid and groups, only CAP_NET_BIND_SERVICE (bit 10) in the
// bounding set and none effective (a non-root process), no_new_privs, a
// seccomp filter, and the YAML's PATH and GREETING over the image's.
var lockedStatus = []string{
	"Uid:\t1000\t1000\t1000\t1000", "Gid:\t3000\t3000\t3000\t3000", "Groups:\t3000 4000",
	"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
	"CapBnd:\t0000000000000400", "CapAmb:\t0000000000000000",
	"NoNewPrivs:\t1", "Seccomp:\t2", "PATH=/bin:/sbin", "GREETING=from the yaml",
}

// TestPolicySecurityContext runs lockedPodYAML under its generated policy
// through real runc in the guest, with containerd 2.4 and 1.7, beside the
// runc baseline on the host: the process ends with the policy's ids,
// capabilities, no_new_privs and seccomp filter, exactly as on the host;
// and a host that drops the seccomp filter, or keeps the image's PATH, is
// denied, naming the rule.
func TestPolicySecurityContext(t *testing.T) {
	versions(t, func(t *testing.T, v harness.Version) {
		s := newSuiteVersion(t, v, handlerSpec{name: contrastHandler, testImage: true, edit: func(c *harness.ShimConfig) { c.DefaultPolicy = "deny-all" }})
		out := filepath.Join(t.TempDir(), "locked.policy.yaml")
		generatePolicyFile(t, s, lockedPodYAML, out)
		manifest, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		status := map[string]string{}
		for _, h := range handlers {
			t.Run(h, func(t *testing.T) {
				pc, ccs, err := harness.PodFromYAML(manifest, h)
				if err != nil {
					t.Fatal(err)
				}
				before := s.snapshot(t)
				pod := s.runPodWith(t, pc)
				c := s.startWith(t, pod, ccs[0])
				trace := s.trace(t, pod, c)
				waitLog(t, s, c, "status-done", 60*time.Second)
				status[h] = strings.ReplaceAll(s.logs(t, c), "\r", "")
				t.Logf("%s:\n%s", h, status[h])
				for _, want := range lockedStatus {
					if !containsExactLine(status[h], want) {
						t.Errorf("the container's status lacks the line %q", want)
					}
				}
				s.removeContainer(t, c)
				s.removePod(t, pod, trace, before)
			})
		}
		if status["runc"] != "" && status[contrastHandler] != status["runc"] {
			t.Errorf("the process in the pod VM differs from runc's on the host:\n%s\nrunc:\n%s", status[contrastHandler], status["runc"])
		}

		pc, ccs, err := harness.PodFromYAML(manifest, contrastHandler)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, rule string
			tamper     func(cc *harness.ContainerConfig)
		}{
			{"seccomp-dropped-denied", "create_container.seccomp", func(cc *harness.ContainerConfig) {
				sec := *cc.Security
				sec.Seccomp = "Unconfined"
				cc.Security = &sec
			}},
			{"image-path-denied", "create_container.env", func(cc *harness.ContainerConfig) { cc.Env = nil }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := s.snapshot(t)
				pod := s.runPodWith(t, pc)
				trace := s.trace(t, pod)
				cc := ccs[0]
				tc.tamper(&cc)
				c, err := s.cri.CreateContainer(s.ctx, pod, cc)
				if err == nil {
					err = s.cri.StartContainer(s.ctx, c.ID)
				}
				if err == nil {
					t.Fatal("the tampered container was created and started")
				}
				msg := cmdErrText(err)
				t.Logf("denied: %s", msg)
				if !containsAny(msg, "policy denies CreateContainer") || !containsAny(msg, tc.rule) {
					t.Errorf("the denial does not name CreateContainer and the rule %s", tc.rule)
				}
				s.removePod(t, pod, trace, before)
			})
		}
	})
}

// containsExactLine reports whether out has the line want (trailing blanks aside).
func containsExactLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimRight(l, " ") == want {
			return true
		}
	}
	return false
}

// initPodYAML has an init container that must complete before the app.
const initPodYAML = `apiVersion: v1
kind: Pod
metadata:
  name: init-demo
  namespace: default
spec:
  automountServiceAccountToken: false
  initContainers:
  - name: prepare
    image: ` + harness.BusyboxImage + `
    command: ["sh", "-c", "echo prepared"]
  containers:
  - name: app
    image: ` + harness.BusyboxImage + `
    command: ["sh", "-c", "echo app-ok; exec sleep 3600"]
`

// TestPolicyInitContainers runs a pod with an init container under its
// generated policy as the kubelet does (the init container to completion,
// then the app), through the agent, which reports the init container's
// exit to the policy: allowed. Out of order, each is denied: the app
// before the init container completed, the init container again after the
// app was created.
func TestPolicyInitContainers(t *testing.T) {
	s := newSuite(t, handlerSpec{name: contrastHandler, testImage: true, edit: func(c *harness.ShimConfig) { c.DefaultPolicy = "deny-all" }})
	out := filepath.Join(t.TempDir(), "init.policy.yaml")
	generatePolicyFile(t, s, initPodYAML, out)
	manifest, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pc, ccs, err := harness.PodFromYAML(manifest, contrastHandler)
	if err != nil {
		t.Fatal(err)
	}
	if len(ccs) != 2 || !ccs[0].Init || ccs[1].Init {
		t.Fatalf("containers %+v: want the init container, then the app", ccs)
	}
	prepare, app := ccs[0], ccs[1]
	before := s.snapshot(t)
	pod := s.runPodWith(t, pc)
	trace := s.trace(t, pod)

	denied := func(cc harness.ContainerConfig, want string) {
		t.Helper()
		c, err := s.cri.CreateContainer(s.ctx, pod, cc)
		if err == nil {
			err = s.cri.StartContainer(s.ctx, c.ID)
		}
		if err == nil {
			t.Fatalf("container %s was created and started out of order", cc.Name)
		}
		msg := cmdErrText(err)
		t.Logf("denied: %s", msg)
		if !containsAny(msg, "create_container.init_order") || !containsAny(msg, want) {
			t.Errorf("the denial of %s does not name the init_order rule and %q", cc.Name, want)
		}
		if c != nil {
			if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
				t.Errorf("crictl rm %s: %v", cc.Name, err)
			}
		}
	}

	denied(app, "before the init containers")
	c := s.startWith(t, pod, prepare)
	if st := s.waitExited(t, c, time.Minute); st.ExitCode != 0 {
		t.Fatalf("init container exited %d", st.ExitCode)
	}
	a := s.startWith(t, pod, app)
	waitLog(t, s, a, "app-ok", time.Minute)
	// CRI reserves a name per attempt: the completed one goes first, as
	// the kubelet's next attempt would carry another number.
	if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
		t.Errorf("crictl rm prepare: %v", err)
	}
	denied(prepare, "after the pod's app containers")
	s.removeContainer(t, a)
	trace.IDs = append(trace.IDs, c.ID, a.ID)
	s.removePod(t, pod, trace, before)
}
