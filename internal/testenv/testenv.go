// Package testenv tells tests where to find what `make` builds or installs
// for them (the guest kernel and images, QEMU 10, containerd, static runc),
// and what to do when it is missing.
//
// Under `make unit`/`make test` the Makefile builds everything first and
// sets RequiredEnv: a missing artifact is then a failure, never a skip. A
// plain `go test ./...` in a fresh clone has built nothing: tests that need
// an artifact skip, naming the make target that builds it.
//
// It imports testing: only tests may import it.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequiredEnv, when set (the Makefile sets it), makes every missing
// artifact a test failure.
const RequiredEnv = "CONTRAST_TEST_REQUIRE_ARTIFACTS"

// Required reports whether missing artifacts fail the tests.
func Required() bool { return os.Getenv(RequiredEnv) != "" }

// Missing skips tb, or fails it under make, saying what is missing and
// which make target provides it.
func Missing(tb testing.TB, target, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		tb.Fatalf("%s (`make %s` provides it)", msg, target)
	}
	tb.Skipf("%s: run `make %s` first, or the whole suite with `make test`", msg, target)
}

// Path returns the file named by the environment variable env, which the
// Makefile sets to what target builds. Unset: the test is skipped (or
// fails under make). Set to a file that does not exist: the test fails.
func Path(tb testing.TB, env, target, what string) string {
	tb.Helper()
	p := os.Getenv(env)
	if p == "" {
		Missing(tb, target, "%s is not set (%s)", env, what)
	}
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("%s (%s): %v", env, what, err)
	}
	return p
}

// Kernel is the guest kernel (CONTRAST_KERNEL, built by `make image`).
func Kernel(tb testing.TB) string {
	tb.Helper()
	return Path(tb, "CONTRAST_KERNEL", "image", "the guest bzImage, which hack/kernel.sh builds")
}

// Cache is the build cache, $CONTRAST_CACHE or ~/.cache/contrast.
func Cache() string {
	if c := os.Getenv("CONTRAST_CACHE"); c != "" {
		return c
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "contrast")
}

// CachedBinary is a tool hack/deps.sh builds into the cache's bin
// directory (containerd, runc-static, ...).
func CachedBinary(tb testing.TB, name string) string {
	tb.Helper()
	p := filepath.Join(Cache(), "bin", name)
	if _, err := os.Stat(p); err != nil {
		Missing(tb, "deps", "%s is not in the build cache (%v)", name, err)
	}
	return p
}

// Command is a program that hack/deps.sh installs from Debian's packages.
func Command(tb testing.TB, name, pkg string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(tb, "deps", "%s not found (Debian package %s)", name, pkg)
	}
	return p
}

// Firmware is the release image's OVMF AmdSevX64 build (OVMF.fd in
// CONTRAST_IMAGE, which `make image` bundles from hack/ovmf.sh).
func Firmware(tb testing.TB) string {
	tb.Helper()
	dir := Path(tb, "CONTRAST_IMAGE", "image", "the release guest image, with the OVMF AmdSevX64 firmware")
	p := filepath.Join(dir, "OVMF.fd")
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("release image %s has no firmware (hack/image.sh bundles hack/ovmf.sh's): %v", dir, err)
	}
	return p
}
