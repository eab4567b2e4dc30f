# The filter as an OCI image Istio's WasmPlugin can pull. Build the .wasm
# first (`make wasm`), then from the repository root:
#   docker build -f deploy/filter.Dockerfile -t openhqm-filter .
FROM scratch
COPY target/wasm32-wasip1/wasm-release/openhqm_filter.wasm /plugin.wasm
