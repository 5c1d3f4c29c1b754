package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/attest"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/generate"
	"github.com/contrast-vm/contrast/policy/initdata"
	"github.com/contrast-vm/contrast/vmimage"
)

// nonceSize is the size of SEV-SNP REPORT_DATA, which carries the nonce.
const nonceSize = 64

const verifyUsage = `(--pod SANDBOX_ID [--state-dir DIR] [--namespace NS] | --report FILE [--certs FILE])
       [--nonce HEX [--workload]] [--reference REF.json|IMAGE_DIR [--vcpus N|MIN-MAX] | --measurement HEX...] [--policy FILE | --pod-yaml FILE]
       [--vcek FILE] [--min-tcb TCB] [--product LINE] [--trusted-chain FILE] [--save-report FILE] [--json]`

const verifySummary = `Verifies a pod VM's SEV-SNP attestation report and prints one line per check:
  signature    the VCEK chains to AMD's root keys (embedded; or --trusted-chain) and signed the report
  measurement  MEASUREMENT is a reference value (the launch's firmware, kernel, initrd, command line, vCPUs):
               with --reference, the measurement computed for each vCPU count the reference
               allows (its "vcpus" range, 1-64 by default; --vcpus narrows it)
  host_data    HOSTDATA is the digest of the pod's initdata document
  report_data  REPORT_DATA binds the nonce (the report is fresh, not replayed): a report
               the host asked for (GetReport: --pod, --save-report) carries SHA-512 of a
               fixed prefix and the nonce, one a container got from its attestation
               endpoint (--workload) the nonce itself
  debug        the guest policy forbids debugging
  tcb          the reported TCB is the VCEK's, committed, and at least --min-tcb
A check whose expected value is not given is skipped (SKIP), never passed.
Nothing is fetched from the network: the VCEK comes from the report's certificate
table or --vcek.

--pod fetches a fresh report from a running pod VM, named by its sandbox id, through
the shim's vsock socket (<state-dir>/<namespace>/<id>/sockets/vsock.sock), with a random nonce
(or --nonce). --report reads a saved one: the JSON --save-report writes and the
containers' attestation endpoint serves ({"tee","report","certs"}), or a raw report
with its certificate table appended; with --nonce it must carry that nonce.

Exit status: 0 every check passed or was skipped, 1 a check failed (they are named),
2 usage error.`

func verify(ctx context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast verify", verifyUsage, verifySummary)
	pod := fs.String("pod", "", "sandbox id of a running pod VM to fetch a fresh report from")
	stateDir := fs.String("state-dir", podstate.DefaultStateDir, "the shim's state_dir (with --pod)")
	namespace := fs.String("namespace", podstate.KubernetesNS, "containerd namespace of the pod (with --pod)")
	reportPath := fs.String("report", "", "verify a saved report (JSON from --save-report or the attestation endpoint, or raw)")
	certsPath := fs.String("certs", "", "the report's certificate table, raw (with --report)")
	nonceHex := fs.String("nonce", "", "the nonce (64 bytes, 128 hex digits) the report must carry; with --pod, sent instead of a random one")
	workload := fs.Bool("workload", false, "the --report came from a container's attestation endpoint: REPORT_DATA is the nonce itself, not the host's GetReport form")
	referencePath := fs.String("reference", "", "reference measurements: a guest image's reference.json (contrast image build --firmware) or the image directory")
	vcpusFlag := fs.String("vcpus", "", "vCPU counts to accept with --reference: N or MIN-MAX within the reference's range (default: all of it)")
	var measurements []string
	fs.Func("measurement", "an acceptable MEASUREMENT, 96 hex digits (repeatable)", func(s string) error {
		measurements = append(measurements, s)
		return nil
	})
	policyPath := fs.String("policy", "", "the pod's initdata document (TOML), or its bare policy (Rego module, wrapped as the runtime wraps it): HOSTDATA must be the document's digest")
	podYAML := fs.String("pod-yaml", "", "Kubernetes YAML carrying the pod's initdata or policy annotation (contrast policy generate)")
	vcekPath := fs.String("vcek", "", "the chip's VCEK certificate (DER or PEM), instead of the report's certificate table")
	minTCB := fs.String("min-tcb", "", "lowest acceptable reported TCB: bl=N,tee=N,snp=N,ucode=N or the TCB_VERSION in hex")
	product := fs.String("product", "", "processor line the report must come from: Milan, Genoa or Turin (default: as the report and VCEK say)")
	chainPath := fs.String("trusted-chain", "", "trust this ASK+ARK chain (PEM, AMD KDS cert_chain format) instead of AMD's embedded roots: for test images, whose simulated SNP device signs with go-sev-guest's test chain")
	savePath := fs.String("save-report", "", "write the report and its certificate table to this file (JSON), to verify again later with --report")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	timeout := fs.Duration("timeout", time.Minute, "how long --pod waits for the report")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	switch {
	case *pod == "" && *reportPath == "":
		return usagef("name the report: --pod SANDBOX_ID or --report FILE")
	case *pod != "" && *reportPath != "":
		return usagef("--pod and --report exclude each other")
	case *certsPath != "" && *reportPath == "":
		return usagef("--certs goes with --report")
	case *workload && (*reportPath == "" || *nonceHex == ""):
		return usagef("--workload goes with --report and --nonce: a report fetched with --pod is the host's")
	case (set["state-dir"] || set["namespace"] || set["timeout"]) && *pod == "":
		return usagef("--state-dir, --namespace and --timeout go with --pod")
	case *referencePath != "" && len(measurements) > 0:
		return usagef("--reference and --measurement exclude each other")
	case *vcpusFlag != "" && *referencePath == "":
		return usagef("--vcpus goes with --reference")
	case *policyPath != "" && *podYAML != "":
		return usagef("--policy and --pod-yaml exclude each other")
	}
	var opts attest.Options
	var nonce *[nonceSize]byte
	if *nonceHex != "" {
		n, err := parseNonce(*nonceHex)
		if err != nil {
			return usageError{err.Error()}
		}
		nonce = &n
	}
	for _, m := range measurements {
		v, err := attest.ParseMeasurement(m)
		if err != nil {
			return usagef("--measurement: %v", err)
		}
		opts.References = append(opts.References, attest.Reference{Measurement: v, Label: "--measurement " + m[:8] + "..."})
	}
	if *minTCB != "" {
		t, err := attest.ParseTCB(*minTCB)
		if err != nil {
			return usagef("--min-tcb: %v", err)
		}
		opts.MinimumTCB = &t
	}
	switch *product {
	case "", "Milan", "Genoa", "Turin":
		opts.Product = *product
	default:
		return usagef("--product %q: want Milan, Genoa or Turin", *product)
	}

	// Files next, so that a mistake in them shows before a pod is asked.
	if *referencePath != "" {
		vcpus, err := parseVCPUsFlag(*vcpusFlag)
		if err != nil {
			return err
		}
		refs, err := loadReferences(*referencePath, vcpus)
		if err != nil {
			return err
		}
		opts.References = refs
	}
	switch {
	case *policyPath != "":
		module, err := os.ReadFile(*policyPath)
		if err != nil {
			return fmt.Errorf("policy: %w", err)
		}
		doc, ok, err := policyFileInitdata(module)
		if !ok {
			return fmt.Errorf("policy %s is neither an initdata document nor a Rego module (no package line); for Kubernetes YAML use --pod-yaml", *policyPath)
		}
		if err != nil {
			return fmt.Errorf("policy %s: %w", *policyPath, err)
		}
		h := doc.HostData()
		opts.HostData = &h
	case *podYAML != "":
		h, err := policyHashOfYAML(*podYAML)
		if err != nil {
			return err
		}
		opts.HostData = &h
	}
	if *vcekPath != "" {
		b, err := os.ReadFile(*vcekPath)
		if err != nil {
			return fmt.Errorf("VCEK: %w", err)
		}
		opts.VCEK = b
	}
	if *chainPath != "" {
		b, err := os.ReadFile(*chainPath)
		if err != nil {
			return fmt.Errorf("trusted chain: %w", err)
		}
		c, err := attest.ParseChain(b)
		if err != nil {
			return fmt.Errorf("%s: %w", *chainPath, err)
		}
		opts.TrustedChains = []attest.Chain{c}
	}

	var ev attest.Evidence
	var source string
	if *pod != "" {
		if err := agent.ValidateID("sandbox id", *pod); err != nil {
			return usagef("--pod: %v", err)
		}
		if nonce == nil {
			var n [nonceSize]byte
			if _, err := rand.Read(n[:]); err != nil {
				return fmt.Errorf("make a nonce: %w", err)
			}
			nonce = &n
		}
		fctx, cancel := context.WithTimeout(ctx, *timeout)
		var err error
		ev, err = fetchReport(fctx, podstate.Dir(*stateDir, *namespace, *pod), *nonce)
		cancel()
		if err != nil {
			return fmt.Errorf("pod %s: %w", *pod, err)
		}
		source = "pod " + *pod
	} else {
		raw, err := os.ReadFile(*reportPath)
		if err != nil {
			return fmt.Errorf("report: %w", err)
		}
		if ev, err = attest.ReadEvidence(raw); err != nil {
			return fmt.Errorf("%s: %w", *reportPath, err)
		}
		if *certsPath != "" {
			if len(ev.Certs) > 0 {
				return fmt.Errorf("%s carries a certificate table already, and --certs names another", *reportPath)
			}
			if ev.Certs, err = os.ReadFile(*certsPath); err != nil {
				return fmt.Errorf("certificate table: %w", err)
			}
		}
		source = *reportPath
	}
	if *savePath != "" {
		b, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		if err := writeFileAtomic(*savePath, append(b, '\n')); err != nil {
			return fmt.Errorf("save report: %w", err)
		}
	}

	if nonce != nil {
		want := *nonce
		if !*workload {
			// The agent binds a host's nonce in a domain of its own.
			want = agent.HostReportData(nonce[:])
		}
		opts.ReportData = &want
	}
	res, err := attest.Verify(ev.Report, ev.Certs, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	if *asJSON {
		if err := printVerdictJSON(sio.stdout, source, ev.TEE, nonce, res); err != nil {
			return err
		}
	} else {
		printVerdict(sio.stdout, source, ev.TEE, nonce, res)
	}
	if failed := res.Failed(); len(failed) > 0 {
		return fmt.Errorf("verification failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

func parseNonce(s string) ([nonceSize]byte, error) {
	var n [nonceSize]byte
	if len(s) != 2*len(n) {
		return n, fmt.Errorf("--nonce is %d characters, want %d hex digits (%d bytes)", len(s), 2*len(n), len(n))
	}
	if _, err := hex.Decode(n[:], []byte(s)); err != nil {
		return n, fmt.Errorf("--nonce: %w", err)
	}
	return n, nil
}

// policyHashOfYAML returns the HOSTDATA of the one initdata document (or
// bare policy, wrapped) a YAML file's workloads carry.
func policyHashOfYAML(path string) ([32]byte, error) {
	in, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}, fmt.Errorf("pod YAML: %w", err)
	}
	embedded, err := generate.Extract(in)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%s: %w", path, err)
	}
	switch len(embedded) {
	case 0:
		return [32]byte{}, fmt.Errorf("%s: no workload carries a policy (annotation %s or %s); run contrast policy generate", path, initdata.Annotation, policy.Annotation)
	case 1:
		return embedded[0].Initdata.HostData(), nil
	}
	names := make([]string, len(embedded))
	for i, e := range embedded {
		names[i] = e.Kind + "/" + e.Name
	}
	return [32]byte{}, fmt.Errorf("%s carries %d policies (%s): give a YAML with the one workload whose pod is verified", path, len(embedded), strings.Join(names, ", "))
}

// fetchReport asks the agent of the pod VM whose state directory is
// podDir for a report carrying nonce.
func fetchReport(ctx context.Context, podDir string, nonce [nonceSize]byte) (attest.Evidence, error) {
	conn, err := qemu.DialGuest(ctx, podDir, agent.AgentPort)
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("reach the agent: %w", err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	resp, err := agent.NewAgentClient(client).GetReport(ctx, &agent.GetReportRequest{ReportData: nonce[:]})
	if err != nil {
		return attest.Evidence{}, fmt.Errorf("get report: %w", err)
	}
	return attest.Evidence{TEE: resp.Tee, Report: resp.Report, Certs: resp.Certs}, nil
}

var statusWord = map[attest.Status]string{attest.Pass: "PASS", attest.Fail: "FAIL", attest.Skip: "SKIP"}

func printVerdict(w io.Writer, source, tee string, nonce *[nonceSize]byte, res *attest.Result) {
	r := res.Report
	fmt.Fprintf(w, "report from %s", source)
	if tee != "" {
		fmt.Fprintf(w, " (TEE %s)", tee)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  measurement  %s\n  host_data    %s\n", r.Measurement, r.HostData)
	if nonce != nil {
		fmt.Fprintf(w, "  nonce        %x\n", nonce[:])
	}
	fmt.Fprintf(w, "  policy %s, vmpl %d, reported TCB %s, signed by the %s\n", r.Policy, r.VMPL, r.ReportedTCB, r.Signer)
	for _, c := range res.Checks {
		fmt.Fprintf(w, "%s %-11s %s\n", statusWord[c.Status], c.Name, c.Reason)
	}
	failed, skipped := res.Failed(), res.Skipped()
	switch {
	case len(failed) > 0:
		fmt.Fprintf(w, "verdict: FAILED (%s)\n", strings.Join(failed, ", "))
	case len(skipped) > 0:
		fmt.Fprintf(w, "verdict: VERIFIED, but not checked: %s\n", strings.Join(skipped, ", "))
	default:
		fmt.Fprintln(w, "verdict: VERIFIED")
	}
}

// verdictJSON is what --json prints.
type verdictJSON struct {
	Verified bool                 `json:"verified"`
	Failed   []string             `json:"failed"`
	Skipped  []string             `json:"skipped"`
	Source   string               `json:"source"`
	TEE      string               `json:"tee,omitempty"`
	Nonce    string               `json:"nonce,omitempty"`
	Checks   []attest.CheckResult `json:"checks"`
	Report   attest.Summary       `json:"report"`
}

func printVerdictJSON(w io.Writer, source, tee string, nonce *[nonceSize]byte, res *attest.Result) error {
	v := verdictJSON{
		Verified: res.OK(),
		Failed:   orEmpty(res.Failed()),
		Skipped:  orEmpty(res.Skipped()),
		Source:   source,
		TEE:      tee,
		Checks:   res.Checks,
		Report:   res.Report,
	}
	if nonce != nil {
		v.Nonce = hex.EncodeToString(nonce[:])
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// loadReferences reads the reference of a guest image: its reference.json,
// or the image directory (whose manifest the reference must match), and
// computes its measurements for the vCPU counts vcpus (nil: all the
// reference allows).
func loadReferences(path string, vcpus *vmimage.VCPURange) ([]attest.Reference, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--reference: %w", err)
	}
	var ref *vmimage.Reference
	if fi.IsDir() {
		ref, err = vmimage.LoadReference(path)
	} else {
		ref, err = vmimage.ReadReference(path)
	}
	if err != nil {
		return nil, err
	}
	want := ref.VCPUs
	if vcpus != nil {
		want = *vcpus
	}
	return attest.ImageReferences(ref, path, want)
}
