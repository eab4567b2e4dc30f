"""Section `filter`: the filter's cost on a passthrough route (what
tests/bench/filter_cost.py measured before it was folded in here).

The sample app (no delay) behind three Envoys with one worker thread each:
without the filter, the filter on every request, and the filter as shipped
(disabled per route outside the prefixes it may capture). wrk drives
GET /healthz, a route the filter never captures, alternating the order of
the three; every figure is the median of RUNS runs.
"""
import os

import envoy_config
from common import log, lua_script, median_row, require_clean, wrk
from stack import App

VARIANTS = ("off", "every", "shipped")


def run(S):
    app = App(S)
    envoys = {v: envoy_config.start(S, v, app.port, None, name=f"envoy-filter-{v}") for v in VARIANTS}
    script = lua_script("report")
    rows = {}
    for conns in S.filter_conns:
        for v, e in envoys.items():  # warm-up
            wrk(f"http://127.0.0.1:{e.port}/healthz", conns, S.warmup, script, label=f"filter-warmup-{v}")
        runs = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for i in range(S.runs):
            # Rotate the order so no variant always runs first.
            for v in order[i % len(order):] + order[:i % len(order)]:
                cx0 = envoy_config.downstream_connections(envoys[v])
                r = wrk(f"http://127.0.0.1:{envoys[v].port}/healthz", conns, S.duration, script,
                        label=f"filter-{v}-c{conns}")
                require_clean(r, f"filter cost, {v}, {conns} connections")
                envoy_config.check_keepalive(envoys[v], cx0, conns, r["requests"], f"filter cost, {v}")
                for e in envoys.values():
                    e.check()
                app.proc.check()
                runs[v].append(r)
                log(f"filter c={conns} run {i + 1}/{S.runs} {v}: {r['rps']:,.0f} req/s p99 {r['p99']:.2f} ms")
        rows[str(conns)] = {v: {**median_row(runs[v]), "runs": [round(r["rps"]) for r in runs[v]]} for v in VARIANTS}
    return {
        "rows": rows,
        "wasm_bytes": os.path.getsize(S.wasm),
        "wrk": f"wrk -t{S.wrk_threads} -c<conns> -d{S.duration}s",
    }
