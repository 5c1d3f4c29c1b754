package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// nettoolImage is busybox with the nettool binary (integration/nettool),
// which does what busybox cannot: nftables.
const nettoolImage = "localhost/contrast-test/nettool:1"

// nettoolChecks is the number of checks nettool runs; all must pass.
const nettoolChecks = "7"

// TestPrivilegedNetworking: a privileged container, in a network namespace
// of its own, gets the kernel networking CNI agents, VPN sidecars and
// service-mesh init containers use: it creates a bridge and a veth pair
// (netlink, and brctl's ioctl), a tap device, and loads nftables tables,
// chains and rules (filter and nat, inet, ip and ip6); the legacy
// iptables tables exist. In a pod VM the kernel is the guest's, so this
// checks its configuration; runc on the host kernel is the baseline.
func TestPrivilegedNetworking(t *testing.T) {
	tool := buildNettool(t)
	matrix(t, func(t *testing.T, s *suite, handler string) {
		importNettoolImage(t, s, tool)
		pod := s.runPodWith(t, harness.PodConfig{Name: "privnet", Handler: handler, Privileged: true})
		// Containers of a pod share its network namespace (in a pod VM,
		// the VM's): nettool and brctl work in new ones.
		script := `nettool; echo "nettool-exit=$?"; ` +
			`if busybox unshare -n busybox brctl addbr nt-ioctl 2>&1; then echo brctl-addbr-ok; fi`
		c := s.startWith(t, pod, harness.ContainerConfig{
			Name: "nettool", Image: nettoolImage, Command: []string{"sh", "-c", script},
			Security: &harness.SecurityContext{Privileged: true},
		})
		st := s.waitExited(t, c, 2*time.Minute)
		logs := s.logs(t, c)
		if st.ExitCode != 0 {
			t.Errorf("the container exited with %d (%s), want 0; log:\n%s", st.ExitCode, st.Reason, logs)
		}
		if !strings.Contains(logs, "nettool: all "+nettoolChecks+" checks passed") {
			failures := regexp.MustCompile(`(?m)^(FAIL .*|nettool: .*)$`).FindAllString(logs, -1)
			if len(failures) == 0 {
				failures = []string{"no nettool result; log:\n" + logs}
			}
			t.Errorf("kernel networking in a privileged container's own network namespace is missing:\n%s", strings.Join(failures, "\n"))
		}
		if !strings.Contains(logs, "brctl-addbr-ok") {
			t.Errorf("`brctl addbr` (bridge ioctl, CONFIG_BRIDGE) failed in a privileged container; log:\n%s", logs)
		}
		s.removeContainer(t, c)
	})
}

// buildNettool compiles integration/nettool statically for the test image.
func buildNettool(t *testing.T) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nettool")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", out, "./nettool")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build integration/nettool: %v\n%s", err, msg)
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// importNettoolImage imports busybox with nettool at /bin/nettool.
func importNettoolImage(t *testing.T, s *suite, tool []byte) {
	t.Helper()
	spec, err := harness.BusyboxSpec(nettoolImage, s.c.Tools().Busybox, []string{"sh"})
	if err != nil {
		t.Fatal(err)
	}
	spec.Files = append(spec.Files, harness.ImageFile{Path: "bin/nettool", Mode: 0o755, Data: tool})
	archive := filepath.Join(t.TempDir(), "nettool.tar")
	if err := harness.WriteOCIArchive(archive, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.Ctr(s.ctx, "images", "import", "--local", archive); err != nil {
		t.Fatalf("import the nettool image: %v", err)
	}
}
