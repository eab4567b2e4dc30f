"""Section `wait`: the latency a wait-mode route adds at low load.

One client (wrk -t1 -c1: one request at a time) POSTs to /echo/wait
through Envoy with the filter, whose route is in wait mode: the request goes
through the bridge, Redis, one worker (running) and back, and the client
gets the app's own 200. Baseline: the same requests through an Envoy
without the filter straight to the app. Every answer must be 200 (a 202
would mean the wait timed out).
"""
import json

import envoy_config
from common import BenchError, ORDER, body_file, http, log, lua_script, median_row, require_clean, wrk
from stack import App, Worker, drop_bridge, fresh_bridge

PATH = "/echo/wait"
VARIANTS = ("direct", "wait")


def run(S):
    app = App(S)
    space, bridge = fresh_bridge(S, "redis", app.port, name="bridge-wait-redis")
    try:
        worker = Worker(S, space, app.port)
        envoys = {
            "direct": envoy_config.start(S, "app", app.port, None, name="envoy-wait-direct"),
            "wait": envoy_config.start(S, "capture", app.port, bridge.port, name="envoy-wait-capture"),
        }
        body_path = body_file("order.json", ORDER)
        status, headers, resp = http("POST", f"http://127.0.0.1:{envoys['wait'].port}{PATH}",
                                     open(body_path, "rb").read(), {"content-type": "application/json"}, timeout=15)
        echoed = json.loads(resp) if status == 200 else {}
        if status != 200 or echoed.get("path") != PATH or "x-correlation-id" not in echoed.get("headers", {}):
            raise BenchError(f"wait: a wait-mode POST did not come back with the app's answer via a worker: "
                             f"{status} {resp[:200]!r}")
        script = lua_script("post", "count", "report")
        env = {"BENCH_BODY": body_path}
        runs = {v: [] for v in VARIANTS}
        for v in VARIANTS:
            wrk(f"http://127.0.0.1:{envoys[v].port}{PATH}", 1, S.warmup, script, env=env, label=f"wait-warmup-{v}")
        for i in range(S.runs):
            for v in VARIANTS[i % 2:] + VARIANTS[:i % 2]:
                cx0 = envoy_config.downstream_connections(envoys[v])
                r = wrk(f"http://127.0.0.1:{envoys[v].port}{PATH}", 1, S.duration, script, env=env,
                        label=f"wait-{v}")
                require_clean(r, f"wait mode, {v}")
                envoy_config.check_keepalive(envoys[v], cx0, 1, r["requests"], f"wait mode, {v}")
                if set(r["statuses"]) != {"200"}:
                    raise BenchError(f"wait mode, {v}: answers {r['statuses']}, expected only 200; see {r['log']}")
                for p in (app.proc, worker.proc, bridge.proc, *envoys.values()):
                    p.check()
                runs[v].append(r)
                log(f"wait run {i + 1}/{S.runs} {v}: p50 {r['p50']:.2f} p99 {r['p99']:.2f} ms, {r['rps']:,.0f} req/s")
        rows = {v: {**median_row(runs[v], keys=("rps", "p50", "p90", "p99", "mean", "max")),
                    "requests": [r["requests"] for r in runs[v]]} for v in VARIANTS}
        return {"rows": rows, "path": PATH}
    finally:
        drop_bridge(bridge)
