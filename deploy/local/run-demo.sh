#!/usr/bin/env bash
# The demo: Envoy + the OpenHQM filter in front of a slow "legacy" app, the
# bridge, one worker, on the embedded queue. Foreground; Ctrl-C stops all.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export OPENHQM_DEMO_DIR="${OPENHQM_DEMO_DIR:-$root/.run/demo}"
mkdir -p "$OPENHQM_DEMO_DIR/logs"
bin="$root/target/debug"
wasm="$root/target/wasm32-wasip1/wasm-release/openhqm_filter.wasm"
envoy="$root/target/tools/envoy"

for port in 8000 8080 9000 9101 9901; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "error: port $port is already in use; the demo needs 8000, 8080, 9000, 9101 and 9901" >&2
        exit 1
    fi
done

pids=()
# Components run in their own sessions, so Ctrl-C reaches only this script,
# which stops them with SIGTERM (the worker then drains its in-flight work).
cleanup() {
    trap - INT TERM HUP EXIT
    # Stop the components before printing anything: if our output was a pipe
    # that Ctrl-C also closed, a write would kill this script (SIGPIPE).
    trap '' PIPE
    # Reverse start order, one at a time: Envoy stops taking traffic, the
    # worker finishes what it holds while the app is still up.
    local i
    for (( i=${#pids[@]}-1; i>=0; i-- )); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    { echo; echo "==> stopped"; } 2>/dev/null || true
}
trap 'cleanup; exit 130' INT TERM HUP
trap cleanup EXIT

logs="$OPENHQM_DEMO_DIR/logs"
setsid "$bin/openhqm-sample-app" --port 8080 >"$logs/sample-app.log" 2>&1 & pids+=($!)
setsid "$bin/openhqm-bridge" --config deploy/local/openhqm.yaml >"$logs/bridge.log" 2>&1 & pids+=($!)
setsid "$bin/openhqm-worker" --config deploy/local/openhqm.yaml >"$logs/worker.log" 2>&1 & pids+=($!)
sed "s#target/wasm32-wasip1/wasm-release/openhqm_filter.wasm#$wasm#" envoy/envoy.yaml >"$OPENHQM_DEMO_DIR/envoy.yaml"
setsid "$envoy" -c "$OPENHQM_DEMO_DIR/envoy.yaml" --disable-hot-restart --log-level warn >"$logs/envoy.log" 2>&1 & pids+=($!)

for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null http://127.0.0.1:8000/healthz 2>/dev/null \
        && curl -fsS -o /dev/null http://127.0.0.1:9000/health 2>/dev/null; then
        ready=1; break
    fi
    sleep 0.1
done
if [ -z "${ready:-}" ]; then
    echo "error: the demo did not come up; logs are in $logs" >&2
    tail -n 20 "$logs"/*.log >&2
    exit 1
fi

cat <<TXT

OpenHQM demo is running (logs: $logs)

  Envoy + filter    http://127.0.0.1:8000   (POST /orders is queued; everything else goes straight to the app)
  bridge API        http://127.0.0.1:9000   (/api/v1/submit, /api/v1/status/{id}, /api/v1/response/{id}, /metrics)
  sample app        http://127.0.0.1:8080   (GET /stats shows its peak concurrency)
  worker admin      http://127.0.0.1:9101   (/metrics: backend calls, in flight, breaker state)

Try:
  curl -si -X POST http://127.0.0.1:8000/orders -H 'content-type: application/json' -d '{"item":"book","qty":1}'
  curl -s  http://127.0.0.1:8000/api/v1/response/<correlation_id from above>
  curl -s  http://127.0.0.1:8000/healthz          # not captured: answered by the app directly
  for i in \$(seq 50); do curl -s -o /dev/null -X POST http://127.0.0.1:8000/orders -H 'content-type: application/json' -d '{"n":'\$i'}' & done; wait
  curl -s  http://127.0.0.1:8080/stats            # max_in_flight stays at 4: the endpoint's limit held

Ctrl-C stops everything.
TXT

# Exit (and clean up) when any component dies.
wait -n "${pids[@]}" || true
echo "a component exited; see $logs" >&2
