# mlsgate — build, test and run. `make help` lists the targets.

SHELL := /bin/bash
GO ?= go
CLANG ?= clang-19
STRIP ?= llvm-strip-19
# The one place clang flags live; bpf/gen.go reads them through bpf2go.
BPF2GO_CFLAGS := -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
export BPF2GO_CC := $(CLANG)
export BPF2GO_STRIP := $(STRIP)
export BPF2GO_CFLAGS

# Debian 12 packages the targets need, by command.
APT_generate := clang-19 llvm-19 libbpf-dev linux-libc-dev
APT_kernel := iproute2
APT_selinux := checkpolicy semodule-utils
APT_guest := qemu-system-x86 busybox-static kmod iproute2 checkpolicy xz-utils policycoreutils semodule-utils selinux-utils
APT_bench := nftables
# promtool (alert rule checks and unit tests); the daemon it comes with is not started by the tests.
APT_monitoring := prometheus

.DEFAULT_GOAL := help
.PHONY: help deps deps-generate deps-kernel deps-selinux deps-guest deps-bench deps-monitoring generate check-generate build man test test-unit test-kernel lint demo demo-xen bench

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# need CMD... PKG...: install PKG with apt-get when a CMD is missing and we are root.
define need
	@missing=""; for c in $(1); do command -v $$c >/dev/null 2>&1 || [ -e $$c ] || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(2) (missing:$$missing)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; } || \
	      { echo "error: apt-get install $(2) failed; install them by hand" >&2; exit 1; }; \
	  else echo "error: missing$$missing; run as root on Debian 12, or: apt-get install $(2)" >&2; exit 1; fi; \
	fi
endef

deps-generate: ## install or check clang-19, llvm-19 and libbpf-dev
	$(call need,$(CLANG) $(STRIP) /usr/include/bpf/bpf_helpers.h,$(APT_generate))

deps-kernel: ## install or check iproute2 (kernel tests)
	$(call need,ip tc,$(APT_kernel))

deps-selinux: ## install or check checkmodule and semodule_package (policy bundle tests)
	$(call need,checkmodule semodule_package,$(APT_selinux))

deps-guest: ## install or check QEMU, static busybox, kmod, xz, SELinux userland (the Debian guest kernel tests)
	$(call need,qemu-system-x86_64 busybox kmod ip checkpolicy checkmodule semodule_package semodule load_policy setfiles sefcontext_compile xz,--no-install-recommends $(APT_guest))

deps-bench: ## install or check nftables (the traffic benchmark's baseline)
	$(call need,nft,$(APT_bench))

deps-monitoring: ## install or check promtool (Debian prometheus: deploy/alerts.yaml checks and unit tests)
	$(call need,promtool,--no-install-recommends $(APT_monitoring))

deps: deps-generate deps-kernel deps-selinux deps-guest deps-bench deps-monitoring ## install or check everything the targets need

generate: deps-generate ## rebuild the bpf2go output in bpf/ (clang-19); commit the result
	$(GO) generate ./bpf/

check-generate: deps-generate ## fail when the committed bpf2go output differs from a fresh build
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cp -r go.mod go.sum bpf $$tmp/ && (cd $$tmp && $(GO) generate ./bpf/) && \
	for f in $$tmp/bpf/*_bpfel.go $$tmp/bpf/*_bpfel.o; do \
	  cmp -s $$f bpf/$$(basename $$f) || { echo "error: bpf/$$(basename $$f) is not up to date; run 'make generate' and commit it" >&2; exit 1; }; \
	done; echo "generated files are up to date"

# The VCS revision for 'mlsgate version' where the toolchain cannot stamp it
# (a git worktree; GOFLAGS=-buildvcs=false); empty outside a git checkout.
BUILDINFO := github.com/mlsgate/mlsgate/agent/buildinfo
VCS_LDFLAGS := $(shell r=$$(git rev-parse HEAD 2>/dev/null) && \
	echo "-X $(BUILDINFO).ldRevision=$$r -X $(BUILDINFO).ldTime=$$(git show -s --format=%cI HEAD)" \
	"-X $(BUILDINFO).ldModified=$$(git diff --quiet HEAD 2>/dev/null && echo false || echo true)")

build: ## build bin/mlsgate (no clang needed)
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -ldflags '$(VCS_LDFLAGS)' -o bin/mlsgate ./cmd/mlsgate

man: ## write the man pages of every command into man/ (generated from the cobra tree; not committed)
	rm -rf man && $(GO) run ./cmd/mlsgate man man

test: check-generate deps-kernel deps-selinux deps-guest deps-bench deps-monitoring test-unit test-kernel ## everything CI runs: generate drift, unit tests, kernel tests

test-unit: ## unprivileged tests of every package
	$(GO) vet ./...
	$(GO) test -count=1 $$($(GO) list ./... | grep -v -e /kernel-tests -e /bench)
	$(GO) test -count=1 -skip Privileged ./bench/...

test-kernel: ## privileged tests against the running kernel (root; skipped otherwise)
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "kernel tests skipped: they need root (BPF, network namespaces); run 'sudo make test-kernel'"; \
	else \
	  $(GO) test -count=1 -v -timeout 60m -run Privileged ./kernel-tests/... ./bench/... && \
	  $(GO) test -count=1 -run '^$$' -fuzz '^FuzzFastpathVerdict$$' -fuzztime 20s ./kernel-tests/; \
	fi

lint: ## gofmt, go vet, and C warnings as errors
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "error: run gofmt -w" >&2; exit 1; }
	$(GO) vet ./...

demo: deps-kernel deps-guest ## the paper's analyst scenario with real enforcement (root; boots the Debian guest kernel where this one lacks ESP or SELinux)
	CGO_ENABLED=0 $(GO) build -o bin/mlsgate ./cmd/mlsgate
	./bin/mlsgate demo --apps examples/analyst

demo-xen: deps-kernel deps-guest ## the analyst scenario on Xen 4.17: mlsgate demo --backend xen in a Debian dom0, guests as PV domains (root; Xen under QEMU TCG, minutes)
	$(GO) test ./kernel-tests -run 'TestPrivilegedXenDemo$$' -count=1 -v -timeout 40m

bench: deps-kernel deps-guest deps-bench ## the full harness (root): per-packet cost, real traffic against nftables, agent, mapper, bundle, Table 1; report in bench/results/<date>
	CGO_ENABLED=0 $(GO) build -o bin/mlsgate ./cmd/mlsgate
	./bin/mlsgate bench all --out bench/results/$$(date -u +%F)

.PHONY: check-units
check-units: ## systemd-analyze verify and security (exposure <= 5.0) on deploy/*.service
	$(GO) test -count=1 -v -run 'TestUnits' ./deploy/
