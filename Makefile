# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
export CONTRAST_CACHE ?= $(HOME)/.cache/contrast
export PATH := $(CONTRAST_CACHE)/bin:$(PATH)
OUT := $(CURDIR)/_output
GO ?= go

.PHONY: all deps generate build image test unit integration demo bench vet clean

all: build

deps:
	hack/deps.sh

generate: deps
	protoc --go_out=. --go_opt=paths=source_relative \
	  --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative api/agent/agent.proto

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
