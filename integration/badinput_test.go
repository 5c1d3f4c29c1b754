package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestContrastBadInput: each kind of bad input makes `crictl runp` fail
// with an error that names the problem, and leaves nothing behind.
func TestContrastBadInput(t *testing.T) {
	versions(t, badInput)
}

func badInput(t *testing.T, v harness.Version) {
	tools := testTools(t)
	muteInitrd := filepath.Join(t.TempDir(), "mute-initrd")
	if err := harness.WriteMuteInitrd(muteInitrd, tools.Busybox); err != nil {
		t.Fatal(err)
	}
	const missingKernel = "/nonexistent/contrast-test/bzImage"
	const agentReady = 5 * time.Second
	s := newSuiteVersion(t, v,
		handlerSpec{name: "contrast-nokernel", edit: func(c *harness.ShimConfig) { c.Kernel = missingKernel }},
		handlerSpec{name: "contrast-false", edit: func(c *harness.ShimConfig) { c.Binary = "/bin/false" }},
		handlerSpec{name: "contrast-mute", edit: func(c *harness.ShimConfig) {
			c.Initrd, c.RootDisk = muteInitrd, ""
			c.AgentReady = agentReady
		}},
		handlerSpec{name: "contrast-badconfig", raw: "[hypervisor]\nvcpus = 0\n"},
		handlerSpec{name: "contrast-snp", edit: func(c *harness.ShimConfig) {
			c.Confidential = "snp"
			c.SNPFirmware = snpFirmwareFixture(t)
		}},
	)

	cases := []struct {
		name, handler string
		// want are alternatives; the error must contain one of each group.
		want        [][]string
		maxDuration time.Duration
		minDuration time.Duration
	}{
		{
			name: "missing-kernel", handler: "contrast-nokernel",
			want:        [][]string{{missingKernel}},
			maxDuration: 30 * time.Second,
		},
		{
			name: "qemu-fails", handler: "contrast-false",
			want:        [][]string{{"/bin/false", "qemu", "VM"}, {"exit", "stopped"}},
			maxDuration: 30 * time.Second,
		},
		{
			name: "guest-never-answers", handler: "contrast-mute",
			want:        [][]string{{"agent"}, {"timeout", "timed out", "deadline", agentReady.String()}},
			minDuration: agentReady,
			maxDuration: agentReady + 45*time.Second,
		},
		{
			// This host has no SEV-SNP: the VM must not start at all.
			name: "confidential-without-snp", handler: "contrast-snp",
			want:        [][]string{{"SEV-SNP"}},
			maxDuration: 30 * time.Second,
		},
		{
			name: "invalid-runtime-config", handler: "contrast-badconfig",
			want:        [][]string{{"vcpus"}},
			maxDuration: 30 * time.Second,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := s.snapshot(t)
			begin := time.Now()
			pod, err := s.cri.RunPod(s.ctx, harness.PodConfig{Name: tc.name, Handler: tc.handler})
			took := time.Since(begin)
			if err == nil {
				t.Fatalf("runp with handler %s succeeded (pod %s), want an error", tc.handler, pod.ID)
			}
			msg := cmdErrText(err)
			t.Logf("crictl runp failed after %s:\n%s", took.Round(time.Millisecond), msg)
			for _, group := range tc.want {
				if !containsAny(msg, group...) {
					t.Errorf("error does not mention any of %q", group)
				}
			}
			if took < tc.minDuration || took > tc.maxDuration {
				t.Errorf("runp failed after %s, want between %s and %s", took, tc.minDuration, tc.maxDuration)
			}
			s.expectNoLeftovers(t, tc.name, func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
			if ids, err := s.cri.PodIDs(s.ctx); err != nil || len(ids) != 0 {
				t.Errorf("crictl pods after the failed runp: %v %v, want none", ids, err)
			}
		})
	}
	t.Run("malformed-bundle", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "shim.toml")
		if err := harness.DefaultShimConfig(s.env, s.c.ShimState).Write(cfg); err != nil {
			t.Fatal(err)
		}
		s.malformedBundles(t, "--runtime", s.env.Shim, "--runtime-config-path", cfg)
	})
}

// TestRuncMalformedBundle runs the hand-made bundles against runc, to
// prove that path of the harness.
func TestRuncMalformedBundle(t *testing.T) {
	versions(t, func(t *testing.T, v harness.Version) {
		s := newSuiteVersion(t, v)
		s.malformedBundles(t, "--runtime", "io.containerd.runc.v2", "--runc-binary", s.c.Tools().Runc, "--runc-root", s.c.RuncRoot)
	})
}

// malformedBundles runs hand-made OCI bundles through `ctr run --config`
// (containerd writes the spec as config.json into the bundle as given):
// each must fail with an error naming what is wrong and leave nothing.
func (s *suite) malformedBundles(t *testing.T, runtimeArgs ...string) {
	rootfs := t.TempDir()
	cases := []struct {
		name string
		spec map[string]any
		want []string
	}{
		{
			// No process to run.
			name: "no-process",
			spec: map[string]any{"ociVersion": "1.1.0", "root": map[string]any{"path": rootfs}, "linux": map[string]any{}},
			want: []string{"process"},
		},
		{
			// A process with no arguments. ctr gives a --config bundle no
			// snapshot, so the contrast shim, which boots the VM first,
			// rejects the missing rootfs: that checks the teardown of a
			// booted VM. runc rejects the empty args.
			name: "empty-args",
			spec: map[string]any{
				"ociVersion": "1.1.0", "root": map[string]any{"path": rootfs},
				"process": map[string]any{"args": []string{}, "cwd": "/", "user": map[string]any{"uid": 0, "gid": 0}},
				"linux":   map[string]any{},
			},
			want: []string{"args", "rootfs", "root"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.json")
			data, err := json.Marshal(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			before := s.snapshot(t)
			id := fmt.Sprintf("bad-%s-%d", tc.name, time.Now().UnixNano()%1e6)
			args := append([]string{"run", "--rm", "--config", path}, runtimeArgs...)
			out, err := s.c.CtrIn(s.ctx, "default", append(args, id)...)
			if err == nil {
				t.Fatalf("ctr run of a bundle with %s succeeded: %s", tc.name, out)
			}
			msg := cmdErrText(err)
			t.Logf("ctr run failed:\n%s", strings.TrimSpace(msg))
			if !containsAny(msg, tc.want...) {
				t.Errorf("error does not mention any of %q", tc.want)
			}
			s.expectNoLeftovers(t, tc.name, func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
			if out, err := s.c.CtrIn(s.ctx, "default", "containers", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("containers after the failed run: %q %v, want none", out, err)
			}
		})
	}
}
