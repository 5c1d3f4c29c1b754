package integration

import (
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
)

// simulatedChain writes the certificate chain the simulated SNP device signs
// with (go-sev-guest's fixed test keys; ASK then ARK, AMD's KDS cert_chain
// format) for `contrast verify --trusted-chain`. A real pod VM's report
// chains to AMD's roots, which contrast verify embeds.
func simulatedChain(t *testing.T) string {
	t.Helper()
	signer, err := sevtest.DefaultTestOnlyCertChain(kds.ProductName(abi.DefaultSevProduct()), time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ask.Raw})...)
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ark.Raw})...)
	path := filepath.Join(t.TempDir(), "simulated-cert-chain.pem")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// verifyRun runs `contrast verify` and returns its output and exit code.
func verifyRun(t *testing.T, s *suite, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(s.ctx, s.env.CLI, append([]string{"verify"}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("contrast verify: %v", err)
	}
	t.Logf("contrast verify %s: exit %d\n%s", strings.Join(args, " "), code, out)
	return string(out), code
}

// TestAttestation runs a pod with a generated policy on the test image, whose
// simulated SNP device reports the launch's HOSTDATA and MEASUREMENT and
// signs with go-sev-guest's test chain, and verifies it as a remote party
// would: against the image's reference values and the pod YAML. Each way a
// report can be wrong fails, naming the check.
func TestAttestation(t *testing.T) {
	fixture := snpFirmwareFixture(t)
	launch := func(c *harness.ShimConfig) {
		c.DefaultPolicy = "deny-all"
		// The guest boots the image's own command line, as under SNP.
		c.LogLevel = "info"
		c.SNPFirmware = fixture
	}
	s := newSuite(t,
		handlerSpec{name: contrastHandler, testImage: true, edit: launch},
		handlerSpec{name: "contrast-cmdline", testImage: true, edit: func(c *harness.ShimConfig) {
			launch(c)
			c.KernelParams = "contrast.test=changed"
		}},
	)
	reference := filepath.Join(s.env.TestImageDir, "reference.json")
	chain := simulatedChain(t)

	dir := t.TempDir()
	manifest := filepath.Join(dir, "pod.policy.yaml")
	generatePolicyFile(t, s, attestPodYAML, manifest)
	otherManifest := filepath.Join(dir, "other.policy.yaml")
	generatePolicyFile(t, s, strings.Replace(attestPodYAML, "value: hello", "value: other", 1), otherManifest)
	generated, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	podCfg, ctrs, err := harness.PodFromYAML(generated, contrastHandler)
	if err != nil {
		t.Fatal(err)
	}

	pod := s.runPodWith(t, podCfg)
	c := s.startWith(t, pod, ctrs[0])
	waitLog(t, s, c, "policy-ok", 30*time.Second)
	podArgs := []string{"--pod", pod.ID, "--state-dir", s.c.ShimState, "--namespace", "k8s.io", "--trusted-chain", chain}

	saved := filepath.Join(dir, "report.json")
	nonce := strings.Repeat("ab", 64)
	t.Run("verified", func(t *testing.T) {
		out, code := verifyRun(t, s, append(podArgs, "--reference", reference, "--pod-yaml", manifest,
			"--nonce", nonce, "--save-report", saved)...)
		if code != 0 {
			t.Fatalf("verify failed (exit %d)", code)
		}
		for _, check := range []string{"signature", "measurement", "host_data", "report_data", "debug"} {
			if !containsLine(out, "PASS", check) {
				t.Errorf("check %s did not pass", check)
			}
		}
	})
	t.Run("other-policy", func(t *testing.T) {
		out, code := verifyRun(t, s, append(podArgs, "--reference", reference, "--pod-yaml", otherManifest)...)
		if code != 1 || !containsLine(out, "FAIL", "host_data") {
			t.Errorf("a report for another policy: exit %d, want 1 with host_data failed", code)
		}
	})
	t.Run("replayed-nonce", func(t *testing.T) {
		fresh := strings.Repeat("cd", 64)
		out, code := verifyRun(t, s, "--report", saved, "--nonce", fresh, "--trusted-chain", chain,
			"--reference", reference, "--pod-yaml", manifest)
		if code != 1 || !containsLine(out, "FAIL", "report_data") {
			t.Errorf("a replayed report: exit %d, want 1 with report_data failed", code)
		}
	})
	t.Run("outside-the-chain", func(t *testing.T) {
		// The same genuine report, checked against AMD's roots alone: its
		// signer is not in that chain.
		out, code := verifyRun(t, s, "--report", saved, "--nonce", nonce, "--reference", reference, "--pod-yaml", manifest)
		if code != 1 || !containsLine(out, "FAIL", "signature") {
			t.Errorf("a report signed outside the trusted chain: exit %d, want 1 with signature failed", code)
		}
	})
	t.Run("other-command-line", func(t *testing.T) {
		pc := podCfg
		pc.Handler = "contrast-cmdline"
		other := s.runPodWith(t, pc)
		args := []string{"--pod", other.ID, "--state-dir", s.c.ShimState, "--namespace", "k8s.io", "--trusted-chain", chain,
			"--reference", reference, "--pod-yaml", manifest}
		out, code := verifyRun(t, s, args...)
		if code != 1 || !containsLine(out, "FAIL", "measurement") || containsLine(out, "FAIL", "host_data") {
			t.Errorf("a VM booted with another command line: exit %d, want 1 with measurement (only) failed", code)
		}
	})
	t.Run("container-endpoint", func(t *testing.T) {
		// The agent's attestation socket is mounted into the container
		// (busybox has no HTTP client for unix sockets; the agent's own
		// tests fetch reports through it).
		res, err := s.cri.Exec(s.ctx, c.ID, true, endpointProbe...)
		if err != nil || res.ExitCode != 0 || !strings.HasPrefix(res.Stdout, "s") {
			t.Fatalf("ls of the attestation socket: %+v %v, want a socket", res, err)
		}
	})
}

// endpointProbe lists the agent's attestation socket in a container; the
// attestation pod's readiness probe, so its policy allows the exec.
var endpointProbe = []string{"ls", "-l", "/run/contrast/attestation/attest.sock"}

// attestPodYAML is policyPodYAML with endpointProbe as readiness probe.
var attestPodYAML = strings.Replace(policyPodYAML, "    livenessProbe:", `    readinessProbe:
      exec:
        command: ["ls", "-l", "/run/contrast/attestation/attest.sock"]
    livenessProbe:`, 1)

// containsLine reports whether out has a line that starts with status and
// names check.
func containsLine(out, status, check string) bool {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == status && strings.TrimSuffix(f[1], ":") == check {
			return true
		}
	}
	return false
}

// generatePolicyFile runs `contrast policy generate` on a pod YAML with the
// image resolved in the suite's containerd.
func generatePolicyFile(t *testing.T, s *suite, podYAML, out string, flags ...string) {
	t.Helper()
	in := out + ".in.yaml"
	if err := os.WriteFile(in, []byte(podYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	// The kubelet files the harness mounts (etc-hosts, termination log)
	// lie under the instance's stand-in for the kubelet's root dir; a
	// test's own settings file adds its lines to that one.
	settings := out + ".settings.yaml"
	var lines string
	for i := 0; i < len(flags); i++ {
		if flags[i] == "--settings" && i+1 < len(flags) {
			extra, err := os.ReadFile(flags[i+1])
			if err != nil {
				t.Fatal(err)
			}
			lines += string(extra)
			flags = append(flags[:i:i], flags[i+2:]...)
			i--
		}
	}
	// A test on a real kubelet names that kubelet's root dir itself.
	if !strings.Contains(lines, "kubeletRootDir:") {
		lines = "kubeletRootDir: " + s.c.KubeletRoot() + "\n" + lines
	}
	if err := os.WriteFile(settings, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"policy", "generate", "--containerd-address", s.c.Socket, "--namespace", "k8s.io", "--settings", settings, "-o", out}, flags...)
	gen := exec.CommandContext(s.ctx, s.env.CLI, append(args, in)...)
	if msg, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("contrast policy generate: %v\n%s", err, msg)
	}
}

// snpFirmwareFixture is the 4 KiB OVMF AmdSevX64 fixture (its SEV metadata
// and kernel-hashes section) that the test image's reference values were
// computed against (hack/image.sh); no full AmdSev build exists here.
func snpFirmwareFixture(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("../vmimage/snp/testdata/ovmf_AmdSev_suffix.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}
