"""Section `cardinality`: does per-path data pile up in the bridge?

CARDINALITY_N requests, each to a path never used before (half
GET /api/v1/status/<random UUID>, answered 404, half GET /no/such/<n>,
also 404), against a Redis bridge. /metrics size, series and RSS are taken
before (IDLE_WAIT s after start) and after. Bounded labels keep /metrics
the same size; a label carrying the raw path would grow it by a series per
request. (The worker's /metrics before/after a drain is in the drain section.)
"""
import statistics
import time

from common import BenchError, free_port, hwm, log, lua_script, metric_sum, rss, series_count, wrk
from stack import drop_bridge, fresh_bridge


def snapshot(bridge):
    text = bridge.metrics()
    return {"metrics_bytes": len(text.encode()), "series": series_count(text), "rss": rss(bridge.proc)}


def once(S, n):
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
        r = wrk(bridge.url, 32, int(max(120, n / 500)), script, env={"BENCH_LIMIT": str(n)}, threads=1,
                label="cardinality", until=lambda: answered() >= n + 2)
        if set(r["statuses"]) != {"404"} or r["errors"]["connect"] or r["errors"]["timeout"]:
            raise BenchError(f"cardinality: expected only 404 answers, got {r['statuses']} errors {r['errors']}; "
                             f"see {r['log']}")
        got = r["statuses"]["404"]
        if got < n:
            raise BenchError(f"cardinality: only {got} of {n} requests answered; see {r['log']}")
        time.sleep(1)
        after = snapshot(bridge)
        after["peak_rss"] = hwm(bridge.proc)
        return {"answered": got, "rps": r["rps"], "before": before, "after": after}
    finally:
        drop_bridge(bridge)


def run(S):
    n = S.cardinality_n
    runs = []
    for i in range(S.runs):
        r = once(S, n)
        runs.append(r)
        b, a = r["before"], r["after"]
        log(f"cardinality run {i + 1}/{S.runs}: {r['answered']:,} distinct paths at {r['rps']:,.0f} req/s; "
            f"/metrics {b['metrics_bytes']:,} -> {a['metrics_bytes']:,} bytes, "
            f"RSS {b['rss'] / 2**20:.1f} -> {a['rss'] / 2**20:.1f} MiB")
    med = lambda f: statistics.median(f(r) for r in runs)
    keys_b = ("metrics_bytes", "series", "rss")
    return {
        "n": n, "runs": len(runs),
        "answered": med(lambda r: r["answered"]), "rps": med(lambda r: r["rps"]),
        "before": {k: med(lambda r: r["before"][k]) for k in keys_b},
        "after": {k: med(lambda r: r["after"][k]) for k in keys_b + ("peak_rss",)},
        "rss_after_runs": [r["after"]["rss"] for r in runs],
    }
