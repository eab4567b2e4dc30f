"""Section `cardinality`: does per-path data pile up in the bridge?

CARDINALITY_N requests, each to a path never used before (half
GET /api/v1/status/<random UUID>, answered 404, half GET /no/such/<n>,
also 404), against a Redis bridge. /metrics size, series and RSS are taken
before (IDLE_WAIT s after start) and after. Bounded labels keep /metrics
the same size; a label carrying the raw path would grow it by a series per
request. (The worker's /metrics before/after a drain is in the drain section.)
"""
import time

from common import BenchError, free_port, hwm, log, lua_script, metric_sum, rss, series_count, wrk
from stack import drop_bridge, fresh_bridge


def snapshot(bridge):
    text = bridge.metrics()
    return {"metrics_bytes": len(text.encode()), "series": series_count(text), "rss": rss(bridge.proc)}


def run(S):
    n = S.cardinality_n
    space, bridge = fresh_bridge(S, "redis", free_port(), name="bridge-cardinality")
    try:
        time.sleep(S.idle_wait)
        # One request of each kind first, so "before" already has their
        # (bounded) label values and only growth beyond that shows.
        script = lua_script("paths", "report")
        answered = lambda: metric_sum(bridge.metrics(), "openhqm_http_requests_total", status="404")
        wrk(bridge.url, 1, 60, script, env={"BENCH_LIMIT": "2"}, threads=1, label="cardinality-prime",
            until=lambda: answered() >= 2)
        before = snapshot(bridge)
        t0 = time.monotonic()
        r = wrk(bridge.url, 32, int(max(120, n / 500)), script, env={"BENCH_LIMIT": str(n)}, threads=1,
                label="cardinality", until=lambda: answered() >= n + 2)
        seconds = time.monotonic() - t0
        if set(r["statuses"]) != {"404"} or r["errors"]["connect"] or r["errors"]["timeout"]:
            raise BenchError(f"cardinality: expected only 404 answers, got {r['statuses']} errors {r['errors']}; "
                             f"see {r['log']}")
        answered = r["statuses"]["404"]
        if answered < n:
            raise BenchError(f"cardinality: only {answered} of {n} requests answered; see {r['log']}")
        time.sleep(1)
        after = snapshot(bridge)
        after["peak_rss"] = hwm(bridge.proc)
        log(f"cardinality: {answered:,} distinct paths in {seconds:.0f} s; /metrics {before['metrics_bytes']:,} -> "
            f"{after['metrics_bytes']:,} bytes, RSS {before['rss'] / 2**20:.1f} -> {after['rss'] / 2**20:.1f} MiB")
        return {"n": n, "answered": answered, "rps": r["rps"], "before": before, "after": after}
    finally:
        drop_bridge(bridge)
