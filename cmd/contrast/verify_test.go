package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/testdata"

	agentsvc "github.com/contrast-vm/contrast/agent"
	"github.com/contrast-vm/contrast/agent/reaper"
	"github.com/contrast-vm/contrast/agent/tee"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

// testSNP signs reports as the agent's simulated SNP device does: with
// go-sev-guest's test-only key chain, for a launch with the given HOSTDATA
// and MEASUREMENT.
type testSNP struct {
	signer      *sevtest.AmdSigner
	hostData    [32]byte
	measurement [48]byte

	mu sync.Mutex // the test signer's randomness is not safe for concurrent use
}

var _ tee.TEE = (*testSNP)(nil)

func newTestSNP(t *testing.T, module []byte, measurement [48]byte) *testSNP {
	t.Helper()
	signer, err := sevtest.DefaultTestOnlyCertChain(kds.ProductName(abi.DefaultSevProduct()), time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	return &testSNP{signer: signer, hostData: wrappedDoc(t, module).HostData(), measurement: measurement}
}

// wrappedDoc is module wrapped into the minimal initdata document, as the
// shim launches a pod with a bare policy.
func wrappedDoc(t testing.TB, module []byte) *initdata.Document {
	t.Helper()
	doc, err := initdata.WrapDocument(module)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func (s *testSNP) Name() string { return tee.NameSNPSimulated }

func (s *testSNP) HostData(context.Context) ([32]byte, error) { return s.hostData, nil }

func (s *testSNP) Report(_ context.Context, reportData [64]byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, err := abi.ReportToAbiBytes(&spb.Report{
		Version:         2,
		Policy:          abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true}),
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		ReportData:      reportData[:],
		Measurement:     s.measurement[:],
		HostData:        s.hostData[:],
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        make([]byte, abi.ReportIDSize),
		ReportIdMa:      make([]byte, abi.ReportIDMASize),
		ChipId:          s.signer.HWID[:],
		Signature:       make([]byte, abi.SignatureSize),
		CurrentTcb:      uint64(s.signer.TCB),
		ReportedTcb:     uint64(s.signer.TCB),
		CommittedTcb:    uint64(s.signer.TCB),
		LaunchTcb:       uint64(s.signer.TCB),
	})
	if err != nil {
		return nil, err
	}
	r, sig, err := s.signer.Sign(abi.SignedComponent(raw))
	if err != nil {
		return nil, err
	}
	if err := abi.SetSignature(r, sig, raw); err != nil {
		return nil, err
	}
	certs, err := s.signer.CertTableBytes()
	if err != nil {
		return nil, err
	}
	return append(raw, certs...), nil
}

// chainPEM writes the test chain as AMD KDS's cert_chain format, for
// --trusted-chain.
func (s *testSNP) chainPEM(t *testing.T) string {
	t.Helper()
	var b []byte
	for _, c := range [][]byte{s.signer.Ask.Raw, s.signer.Ark.Raw} {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	return writeTemp(t, "chain.pem", b)
}

func writeTemp(t *testing.T, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testLaunchKernel is the kernel digest of the made-up image the verify
// tests' references describe.
var testLaunchKernel = strings.Repeat("2", 64)

// referenceFile writes a reference.json as contrast image build
// --firmware does, for the fixture firmware and an image with the given
// kernel command line; it accepts 1 to 64 vCPUs.
func referenceFile(t *testing.T, cmdline string) string {
	t.Helper()
	m := &vmimage.Manifest{KernelCmdline: cmdline, Files: []vmimage.File{{Name: vmimage.KernelFile, SHA256: testLaunchKernel}}}
	ref, err := vmimage.ComputeReference(m, vmimage.ReferenceOptions{Firmware: fixtureOVMF})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), vmimage.ReferenceFile)
	if err := vmimage.WriteReference(p, ref); err != nil {
		t.Fatal(err)
	}
	return p
}

// launchMeasurement is what the hardware would report for that image
// booted with the fixture firmware on vcpus vCPUs, computed from the
// firmware image itself rather than from a reference.
func launchMeasurement(t *testing.T, cmdline string, vcpus int) [48]byte {
	t.Helper()
	fw, err := os.ReadFile(fixtureOVMF)
	if err != nil {
		t.Fatal(err)
	}
	kh := &snp.KernelHashes{Cmdline: snp.CmdlineHash(cmdline), Initrd: sha256.Sum256(nil)}
	if _, err := hex.Decode(kh.Kernel[:], []byte(testLaunchKernel)); err != nil {
		t.Fatal(err)
	}
	m, err := snp.Measure(snp.Launch{Firmware: fw, Kernel: kh, VCPUs: vcpus, VCPUType: vmimage.DefaultVCPUType, GuestFeatures: vmimage.DefaultGuestFeatures})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// podYAML is a pod whose template carries module as its bare policy.
func podYAML(t *testing.T, module []byte) string {
	t.Helper()
	return podYAMLWith(t, policy.Annotation, policy.EncodeAnnotation(module))
}

// kataPodYAML is a pod whose template carries module inside the minimal
// initdata document under Kata's annotation, as contrast policy generate
// writes it.
func kataPodYAML(t *testing.T, module []byte) string {
	t.Helper()
	value, err := initdata.EncodeAnnotation(wrappedDoc(t, module).Raw())
	if err != nil {
		t.Fatal(err)
	}
	return podYAMLWith(t, initdata.Annotation, value)
}

func podYAMLWith(t *testing.T, key, value string) string {
	t.Helper()
	return writeTemp(t, "pod.yaml", fmt.Appendf(nil, `apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    %s: %s
spec:
  containers:
  - name: web
    image: nginx@sha256:%s
`, key, value, strings.Repeat("a", 64)))
}

// servePodVM serves a real agent service with tee t behind a hybrid vsock
// socket at <stateDir>/<namespace>/<id>/vsock.sock, as the shim's vsock
// backend exposes a pod VM's agent, and installs module as its policy.
func servePodVM(t *testing.T, stateDir, namespace, id string, snp tee.TEE, module []byte) {
	t.Helper()
	dir := filepath.Join(stateDir, namespace, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := agentsvc.DefaultConfig(new(reaper.Reaper)) // runs no process: GetReport only
	cfg.RunDir = filepath.Join(t.TempDir(), "run")
	cfg.RuncRoot = filepath.Join(t.TempDir(), "runc")
	cfg.RuncBinary = self
	cfg.SetHostname = nil
	cfg.ConfigureNetwork = nil // not the VM: leave the host's network alone
	cfg.AttestationEndpoint = false
	cfg.TEE = snp
	svc, err := agentsvc.NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The vhost-user vsock backend's hybrid socket, which qemu.DialGuest tries first.
	hybrid, err := net.Listen("unix", filepath.Join(dir, "vsock.sock"))
	if err != nil {
		t.Fatal(err)
	}
	stdioL, err := net.Listen("unix", filepath.Join(dir, "stdio.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- svc.Serve(ctx, agentsvc.Listeners{Agent: hybridListener{hybrid, api.AgentPort}, Stdio: stdioL})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	if _, err := svc.SetPolicy(ctx, &api.SetPolicyRequest{Initdata: wrappedDoc(t, module).Raw()}); err != nil {
		t.Fatal(err)
	}
}

// hybridListener answers the Firecracker hybrid vsock handshake for one
// guest port, as the vsock backend does in front of the guest.
type hybridListener struct {
	net.Listener
	port uint32
}

func (l hybridListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		line, err := bufio.NewReaderSize(c, 16).ReadString('\n')
		if err == nil && line == fmt.Sprintf("CONNECT %d\n", l.port) {
			if _, err := fmt.Fprintf(c, "OK %d\n", l.port); err == nil {
				return c, nil
			}
		}
		c.Close()
	}
}

func TestVerifyUsage(t *testing.T) {
	nonce := strings.Repeat("ab", 64)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "name the report: --pod SANDBOX_ID or --report FILE"},
		{[]string{"--pod", "p", "--report", "r"}, "--pod and --report exclude each other"},
		{[]string{"--pod", "p", "--certs", "c"}, "--certs goes with --report"},
		{[]string{"--report", "r", "--state-dir", "/x"}, "--state-dir, --namespace and --timeout go with --pod"},
		{[]string{"--report", "r", "--reference", "x.json", "--measurement", strings.Repeat("0", 96)}, "--reference and --measurement exclude each other"},
		{[]string{"--report", "r", "--policy", "p", "--pod-yaml", "y"}, "--policy and --pod-yaml exclude each other"},
		{[]string{"--report", "r", "--nonce", "abcd"}, "--nonce is 4 characters, want 128 hex digits"},
		{[]string{"--report", "r", "--nonce", "zz" + nonce[2:]}, "--nonce: encoding/hex"},
		{[]string{"--report", "r", "--measurement", "abc"}, "--measurement: measurement \"abc\" is 3 characters"},
		{[]string{"--report", "r", "--min-tcb", "bl=1"}, "--min-tcb: TCB"},
		{[]string{"--report", "r", "--product", "Naples"}, `--product "Naples"`},
		{[]string{"--pod", "../etc", "--nonce", nonce}, "--pod: sandbox id"},
		{[]string{"--report", "r", "extra"}, `unexpected argument "extra"`},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
	} {
		code, _, stderr := runCLI(t, append([]string{"verify"}, tc.args...)...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("verify %q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	if code, _, stderr := runCLI(t, "verify", "-h"); code != 0 || !strings.Contains(stderr, "usage: contrast verify (--pod SANDBOX_ID") {
		t.Errorf("verify -h: exit %d, stderr %q", code, stderr)
	}
}

// TestVerifySampleReport verifies go-sev-guest's real AMD-signed sample
// report from a file, against AMD's embedded roots: every check passes but
// debug (the sample VM allowed debugging), and the CLI says so.
func TestVerifySampleReport(t *testing.T) {
	report := writeTemp(t, "report.bin", testdata.AttestationBytes)
	vcek := writeTemp(t, "vcek.der", testdata.VcekBytes)
	nonce := "0102030405" + strings.Repeat("00", 59)
	measurement := "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
	// A report of AMD's sample carries the nonce verbatim, as the containers'
	// attestation endpoint writes it.
	args := []string{"verify", "--report", report, "--workload", "--vcek", vcek, "--nonce", nonce, "--measurement", measurement, "--min-tcb", "bl=2,tee=0,snp=5,ucode=68"}

	code, stdout, stderr := runCLI(t, args...)
	t.Logf("stdout:\n%s", stdout)
	if code != 1 || !strings.Contains(stderr, "verification failed: debug\n") {
		t.Fatalf("exit %d, stderr %q; want 1 naming debug", code, stderr)
	}
	for _, line := range []string{
		"PASS signature   the report is signed by the VCEK, which chains to AMD's roots",
		"PASS measurement MEASUREMENT " + measurement,
		"SKIP host_data   no policy given",
		"PASS report_data REPORT_DATA is the nonce",
		"FAIL debug       the guest policy 0xb0000 allows debugging",
		"PASS tcb         reported TCB bl=2,tee=0,snp=5,ucode=68",
		"verdict: FAILED (debug)",
	} {
		if !strings.Contains(stdout, line) {
			t.Errorf("output lacks %q", line)
		}
	}

	code, stdout, _ = runCLI(t, append(args, "--json")...)
	var v verdictJSON
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	if code != 1 || v.Verified || len(v.Failed) != 1 || v.Failed[0] != "debug" || len(v.Skipped) != 1 || v.Skipped[0] != "host_data" ||
		len(v.Checks) != 6 || v.Report.Measurement != measurement || v.Nonce != nonce {
		t.Errorf("--json: exit %d, %+v", code, v)
	}

	// Without the VCEK nothing chains.
	code, stdout, stderr = runCLI(t, "verify", "--report", report)
	if code != 1 || !strings.Contains(stdout, "FAIL signature   no VCEK certificate") || !strings.Contains(stderr, "verification failed: signature, debug, tcb") {
		t.Errorf("no VCEK: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestVerifyPod fetches reports from a pod VM's agent through the hybrid
// vsock socket, as the shim's vsock backend serves it, and checks them as
// the end-to-end test does: against the reference measurement and
// the pod YAML it passes; another policy, another launch (kernel command
// line), a replayed nonce and a key outside the trusted chain fail, each
// naming the check.
func TestVerifyPod(t *testing.T) {
	module := policy.AllowAll()
	// The pod was launched with 3 vCPUs (its limits asked for them); the
	// reference lists no table, only what the measurement is computed from.
	const cmdline = "console=ttyS0 root=/dev/vda ro"
	measurement := launchMeasurement(t, cmdline, 3)
	measurementHex := hex.EncodeToString(measurement[:])
	snp := newTestSNP(t, module, measurement)
	stateDir := filepath.Join(t.TempDir(), "state")
	servePodVM(t, stateDir, "k8s.io", "sandbox1", snp, module)
	chain := snp.chainPEM(t)
	yaml := podYAML(t, module)
	pod := []string{"verify", "--pod", "sandbox1", "--state-dir", stateDir, "--trusted-chain", chain}

	reference := referenceFile(t, cmdline)
	// An image whose command line differs by one character.
	otherReference := referenceFile(t, "console=ttyS1 root=/dev/vda ro")
	saved := filepath.Join(t.TempDir(), "saved.json")
	code, stdout, stderr := runCLI(t, append(pod, "--reference", reference, "--pod-yaml", yaml, "--save-report", saved)...)
	t.Logf("stdout:\n%s", stdout)
	if code != 0 || !strings.Contains(stdout, "verdict: VERIFIED\n") || !strings.Contains(stdout, "report from pod sandbox1 (TEE snp-simulated)") ||
		!strings.Contains(stdout, "is the reference for "+reference+", 3 vCPUs") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	nonce := lineValue(t, stdout, "  nonce        ")

	for _, tc := range []struct {
		name   string
		args   []string
		failed string
		line   string
	}{
		{"other policy", append(pod, "--measurement", measurementHex, "--policy", writeTemp(t, "other.rego", policy.DenyAll())),
			"host_data", "FAIL host_data   HOSTDATA " + wrappedDoc(t, module).HostDataHex() + " is not the initdata digest " + wrappedDoc(t, policy.DenyAll()).HostDataHex()},
		{"other launch", append(pod, "--reference", otherReference, "--pod-yaml", yaml),
			"measurement", "FAIL measurement MEASUREMENT " + measurementHex + " is none of the 64 reference values"},
		{"fewer vCPUs", append(pod, "--reference", reference, "--vcpus", "1-2", "--pod-yaml", yaml),
			"measurement", "FAIL measurement MEASUREMENT " + measurementHex + " is none of the 2 reference values"},
		{"vCPUs beyond the reference", append(pod, "--reference", reference, "--vcpus", "1-65", "--pod-yaml", yaml),
			"", "vCPU counts 1-65 lie outside the reference's 1-64"},
		{"other launch, --measurement", append(pod, "--measurement", strings.Repeat("00", 48), "--pod-yaml", yaml),
			"measurement", "FAIL measurement MEASUREMENT " + measurementHex + " is none of the 1 reference values"},
		{"replayed report, new nonce", []string{"verify", "--report", saved, "--trusted-chain", chain, "--measurement", measurementHex, "--pod-yaml", yaml, "--nonce", strings.Repeat("ee", 64)},
			"report_data", "FAIL report_data REPORT_DATA " + hostReportData(t, nonce) + " is not the nonce " + hostReportData(t, strings.Repeat("ee", 64))},
		{"host's report taken for a workload's", []string{"verify", "--report", saved, "--workload", "--trusted-chain", chain, "--measurement", measurementHex, "--pod-yaml", yaml, "--nonce", nonce},
			"report_data", "FAIL report_data REPORT_DATA " + hostReportData(t, nonce) + " is not the nonce " + nonce},
		{"AMD's roots only", []string{"verify", "--pod", "sandbox1", "--state-dir", stateDir, "--measurement", measurementHex, "--pod-yaml", yaml},
			"signature", "FAIL signature   VCEK could not be verified by any trusted roots"},
		{"other namespace", []string{"verify", "--pod", "sandbox1", "--state-dir", stateDir, "--namespace", "default"},
			"", "no VM in " + filepath.Join(stateDir, "default", "sandbox1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			t.Logf("stdout:\n%s", stdout)
			if tc.failed == "" {
				if code != 1 || !strings.Contains(stderr, tc.line) {
					t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr, tc.line)
				}
				return
			}
			if code != 1 || stderr != "contrast verify: verification failed: "+tc.failed+"\n" || !strings.Contains(stdout, tc.line) {
				t.Errorf("exit %d, stderr %q; want 1 naming %s only, and %q", code, stderr, tc.failed, tc.line)
			}
		})
	}

	// The saved report verifies again with its own nonce.
	code, stdout, stderr = runCLI(t, "verify", "--report", saved, "--trusted-chain", chain, "--measurement", measurementHex, "--pod-yaml", yaml, "--nonce", nonce, "--json")
	var v verdictJSON
	if err := json.Unmarshal([]byte(stdout), &v); err != nil || code != 0 || !v.Verified || v.TEE != tee.NameSNPSimulated || len(v.Skipped) != 0 {
		t.Errorf("saved report: exit %d, %+v, %v\n%s", code, v, err, stderr)
	}
	// The same pod YAML as contrast policy generate writes it (Kata's
	// initdata annotation), and the initdata document itself.
	for _, args := range [][]string{
		{"--pod-yaml", kataPodYAML(t, module)},
		{"--policy", writeTemp(t, "initdata.toml", wrappedDoc(t, module).Raw())},
	} {
		code, stdout, stderr = runCLI(t, append([]string{"verify", "--report", saved, "--trusted-chain", chain, "--measurement", measurementHex, "--nonce", nonce}, args...)...)
		if code != 0 || !strings.Contains(stdout, "PASS host_data   HOSTDATA is the initdata digest "+wrappedDoc(t, module).HostDataHex()) {
			t.Errorf("verify %s: exit %d\nstdout %s\nstderr %s", args[0], code, stdout, stderr)
		}
	}
	// A nonce given with --pod is the one the report carries.
	code, stdout, _ = runCLI(t, append(pod, "--nonce", strings.Repeat("42", 64))...)
	if code != 0 || lineValue(t, stdout, "  nonce        ") != strings.Repeat("42", 64) || !strings.Contains(stdout, "verdict: VERIFIED, but not checked: measurement, host_data") {
		t.Errorf("--pod --nonce: exit %d\n%s", code, stdout)
	}
}

func lineValue(t *testing.T, out, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return v
		}
	}
	t.Fatalf("no line %q in\n%s", prefix, out)
	return ""
}

// TestVerifyReferenceErrors checks that a bad --reference stops before any
// report is read, naming the problem.
func TestVerifyReferenceErrors(t *testing.T) {
	report := writeTemp(t, "report.bin", testdata.AttestationBytes)
	for _, tc := range []struct {
		reference, want string
	}{
		{filepath.Join(t.TempDir(), "absent.json"), "no such file"},
		{writeTemp(t, "reference.json", []byte(`{"schema": 7}`)), "schema 7"},
		{writeTemp(t, "reference.json", []byte(`not json`)), "malformed"},
		{t.TempDir(), "has no reference.json (build it with `contrast image build --firmware`)"},
	} {
		code, stdout, stderr := runCLI(t, "verify", "--report", report, "--reference", tc.reference)
		if code != 1 || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("--reference %s: exit %d, stdout %q, stderr %q; want 1 and %q", tc.reference, code, stdout, stderr, tc.want)
		}
	}
}

// hostReportData is the REPORT_DATA of a GetReport with the nonce in hex.
func hostReportData(t *testing.T, nonce string) string {
	t.Helper()
	b, err := hex.DecodeString(nonce)
	if err != nil {
		t.Fatal(err)
	}
	d := api.HostReportData(b)
	return hex.EncodeToString(d[:])
}
