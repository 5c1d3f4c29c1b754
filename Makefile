# Two commands set everything up on a fresh machine:
#   make demo   runs a pod in its own VM through containerd and crictl
#   make test   runs every check (vet and staticcheck, unit under -race with
#               fuzz seeds, end to end)
# Downloads and builds are cached in $(CONTRAST_CACHE), outside the checkout.
SHELL := /bin/bash
export CONTRAST_CACHE ?= $(HOME)/.cache/contrast
export PATH := $(CONTRAST_CACHE)/bin:/usr/sbin:/sbin:$(PATH)
OUT := $(CURDIR)/_output
BIN := $(OUT)/bin
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/contrast-vm/contrast/shim.Version=$(VERSION)

# What the tests get told: built binaries, the guest images (release, and the
# test image whose agent has the simulated SNP device), the kernel; and that
# everything was built, so a missing artifact fails a test instead of
# skipping it (a bare `go test ./...` skips those tests, naming the target).
TEST_ENV = CONTRAST_SHIM=$(BIN)/containerd-shim-contrast-v2 \
	CONTRAST_CLI=$(BIN)/contrast \
	CONTRAST_IMAGE=$(OUT)/image \
	CONTRAST_TEST_IMAGE=$(OUT)/image-test \
	CONTRAST_KERNEL=$$(hack/kernel.sh) \
	CONTRAST_QEMU_SNP=$(CONTRAST_CACHE)/qemu10/bin/qemu-system-x86_64 \
	CONTRAST_TEST_ARTIFACTS=$(OUT)/test-artifacts \
	CONTRAST_TEST_REQUIRE_ARTIFACTS=1

.PHONY: all deps generate build image test unit integration demo bench vet fuzz clean

# The Kubernetes node the integration tests run (kube-apiserver, controller
# manager, scheduler, kubelet, kubectl at one pinned version, and kine): built
# once from the Go module proxy and cached under $(CONTRAST_CACHE)/kubernetes
# (cold: about 29 CPU-minutes). hack/kubernetes.sh prints the directory; only
# the targets that run a node ask for it, so `make demo` and `make unit` never
# build it.
KUBE_ENV = CONTRAST_KUBERNETES=$$(hack/kubernetes.sh)
.PHONY: kubernetes
kubernetes:
	@hack/kubernetes.sh >/dev/null
integration bench: kubernetes

all: build

deps:
	@hack/deps.sh

generate: deps
	protoc --go_out=. --go_opt=paths=source_relative \
	  --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative api/agent/agent.proto

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/containerd-shim-contrast-v2 ./cmd/containerd-shim-contrast-v2
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/contrast ./cmd/contrast
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/contrast-node-installer ./cmd/contrast-node-installer

# The guest image: kernel (cached), static agent, runc and busybox's mke2fs
# (for the pods' encrypted scratch disks) in a reproducible read-only root disk
# (rootfs.img, dm-verity, root hash on the kernel command line); and the test image, the same with the simulated SNP device.
image: deps
	@OUT=$(OUT) hack/image.sh >/dev/null
	@OUT=$(OUT) VARIANT=test hack/image.sh >/dev/null

# The simulated SNP device exists only in test builds (build tag).
SIM_TAGS := contrast_simsnp

# staticcheck comes pinned from hack/deps.sh (into $(CONTRAST_CACHE)/bin).
SIM_PKGS := ./agent/... ./attest/... ./cmd/contrast-agent/...
vet: deps
	$(GO) vet ./...
	$(GO) vet -tags $(SIM_TAGS) $(SIM_PKGS)
	staticcheck ./...
	staticcheck -tags $(SIM_TAGS) $(SIM_PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# The unit tests run under the race detector, all packages: on the 2-core
# machines that took 413 s against 270 s without it (2026-12-07, loaded by
# other work; layer and policy/generate slow down most). `make unit RACE=`
# runs them without it.
RACE ?= -race
unit: deps image
	@rc=0; \
	$(TEST_ENV) $(GO) test $(RACE) -count=1 -timeout 20m $$($(GO) list ./... | grep -v /integration) || rc=1; \
	$(TEST_ENV) $(GO) test $(RACE) -count=1 -timeout 10m -tags $(SIM_TAGS) ./agent/tee/... ./attest/... || rc=1; \
	exit $$rc

integration: deps build image
	$(TEST_ENV) $(KUBE_ENV) $(GO) test -count=1 -timeout 60m -v ./integration/... 2>&1 | tee $(OUT)/integration.log; exit $${PIPESTATUS[0]}

# Every stage runs even when an earlier one fails; one summary at the end.
test:
	@OUT=$(OUT) MAKE="$(MAKE)" hack/test.sh

demo: deps build image
	$(TEST_ENV) $(GO) run ./hack/demo

# End-to-end figures, each next to its baseline measured in the same run:
# pod start via crictl for runc and contrast-cc, and a bare VM boot of the
# same image to agent-ready (runp/bare-boot is the shim's overhead); layer
# conversion beside SHA-256 of the same bytes; pod start with a cold and a
# warm layer cache.
bench: deps build image
	$(GO) test -run '^$$' -bench . -benchtime 3x ./layer/
	$(TEST_ENV) $(KUBE_ENV) $(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./integration/...

# Runs every fuzz target for FUZZTIME each (the seed corpora run in `make unit`).
FUZZTIME ?= 20s
fuzz:
	@set -e; for pkg in $$($(GO) list ./... | grep -v /integration); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | cut -c6-); do \
	    echo "==> $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf $(OUT)

# `make demo`'s story through kubectl on a real single-node Kubernetes
# cluster: installer DaemonSet, RuntimeClass, a Deployment with its policy,
# logs, exec, a denied exec, delete, nothing left on the host.
.PHONY: demo-k8s
demo-k8s: deps build image kubernetes
	$(TEST_ENV) $(KUBE_ENV) $(GO) run ./hack/demo-k8s

# The node installer as the installer image carries it: static, since that
# image has no libc (the Kubernetes tests write it without a container
# engine: integration/harness.WriteInstallerImage).
TEST_ENV += CONTRAST_NODE_INSTALLER=$(BIN)/contrast-node-installer-static
.PHONY: static-installer
build: static-installer
static-installer:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/contrast-node-installer-static ./cmd/contrast-node-installer
