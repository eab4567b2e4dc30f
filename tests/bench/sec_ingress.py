"""Section `ingress`: what a captured POST costs at the edge.

Four Envoys, same concurrency (ENVOY_CONCURRENCY), all answering
POST /echo/async with the same ~200-byte JSON body:
  direct    Envoy answers 202 itself (direct_response): the ceiling
  app       Envoy proxies to the sample app (no delay), filter removed: the baseline
  embedded  the filter captures the POST (async) -> bridge -> embedded queue
  redis     the same on Redis Streams
No workers run. Every captured run starts from an empty queue (a fresh
bridge on a fresh Redis key space or data dir), and afterwards the queue must
have grown by exactly the requests wrk counted (plus at most one in flight
per connection when wrk stopped), with no non-2xx answers.
"""
import json
import time

import envoy_config
from common import (BenchError, ORDER, body_file, cpu_text, free_port, http, hwm, log, lua_script, median_row,
                    redis_pid, require_clean, wrk)
from stack import App, drop_bridge, fresh_bridge, settle

VARIANTS = ("direct", "app", "embedded", "redis")
PATH = "/echo/async"


def smoke(url, variant, body, attempts=5):
    """One request through the variant, checked by hand: a captured POST
    must get 202 + Location + x-correlation-id, the app path the app's echo."""
    last = None
    for _ in range(attempts):
        try:
            status, headers, resp = http("POST", url, body, {"content-type": "application/json"})
        except OSError as e:
            last = str(e)
            time.sleep(0.2)
            continue
        if variant == "app":
            if status == 200 and json.loads(resp).get("path") == PATH:
                return
        elif variant == "direct":
            if status == 202:
                return
        elif status == 202 and headers.get("location", "").startswith("/api/v1/response/") \
                and headers.get("x-correlation-id"):
            return
        last = f"{status} {resp[:200]!r}"
        # A bridge restarted under Envoy: the first call may meet a stale
        # pooled connection; try again before calling it broken.
        time.sleep(0.2)
    raise BenchError(f"ingress {variant}: POST {url} did not answer as expected: {last}")


def run(S):
    app = App(S)
    bridge_ports = {"embedded": free_port(), "redis": free_port()}
    envoys = {
        "direct": envoy_config.start(S, "direct", app.port, None, name="envoy-ingress-direct"),
        "app": envoy_config.start(S, "app", app.port, None, name="envoy-ingress-app"),
        "embedded": envoy_config.start(S, "capture", app.port, bridge_ports["embedded"], name="envoy-ingress-embedded"),
        "redis": envoy_config.start(S, "capture", app.port, bridge_ports["redis"], name="envoy-ingress-redis"),
    }
    body_path = body_file("order.json", ORDER)
    body = open(body_path, "rb").read()
    script = lua_script("post", "report")
    env = {"BENCH_BODY": body_path}
    rows = {}

    def measure(variant, conns, duration, label):
        url = f"http://127.0.0.1:{envoys[variant].port}{PATH}"
        bridge = None
        try:
            if variant in ("embedded", "redis"):
                _, bridge = fresh_bridge(S, variant, app.port, port=bridge_ports[variant], name=f"bridge-{variant}")
            smoke(url, variant, body)
            if bridge:
                depth0, acc0 = bridge.depth(), settle(bridge, "filter")
            cx0 = envoy_config.downstream_connections(envoys[variant])
            watch = {"envoy": envoys[variant].pid, "app": app.proc.pid if variant == "app" else None,
                     "bridge": bridge.proc.pid if bridge else None,
                     "redis": redis_pid() if variant == "redis" else None}
            r = wrk(url, conns, duration, script, env=env, label=label, watch=watch)
            require_clean(r, f"ingress {variant}, {conns} connections")
            envoy_config.check_keepalive(envoys[variant], cx0, conns, r["requests"], f"ingress {variant}")
            for p in (envoys[variant].check, app.proc.check):
                p()
            if bridge:
                accepted = settle(bridge, "filter") - acc0
                enqueued = bridge.depth() - depth0
                redis_len = bridge.space.redis_depth()
                r["enqueued"], r["accepted"] = enqueued, accepted
                problems = []
                # wrk counts answers; requests still in flight when it stops
                # (at most one per connection) may be queued too, and a bridge
                # whose client went away may publish without counting.
                if not r["requests"] <= accepted <= enqueued <= r["requests"] + conns:
                    problems.append(f"wrk counted {r['requests']} answers, the bridge accepted {accepted}, "
                                    f"the queue grew by {enqueued}")
                if redis_len is not None and redis_len != depth0 + enqueued:
                    problems.append(f"XLEN {redis_len} != {depth0 + enqueued}")
                if problems:
                    raise BenchError(f"ingress {variant}, {conns} connections: " + "; ".join(problems) +
                                     f"; see {r['log']} and {bridge.proc.log}")
                r["peak_rss"] = hwm(bridge.proc)
            return r
        finally:
            drop_bridge(bridge)

    for conns in S.conns:
        for v in VARIANTS:
            measure(v, conns, S.warmup, f"ingress-warmup-{v}")
        runs = {v: [] for v in VARIANTS}
        for i in range(S.runs):
            order = list(VARIANTS)
            for v in order[i % len(order):] + order[:i % len(order)]:
                r = measure(v, conns, S.duration, f"ingress-{v}-c{conns}")
                runs[v].append(r)
                extra = f", queue +{r['enqueued']}" if "enqueued" in r else ""
                log(f"ingress c={conns} run {i + 1}/{S.runs} {v}: {r['rps']:,.0f} req/s "
                    f"p50 {r['p50']:.2f} p99 {r['p99']:.2f} ms{extra}; CPU % {cpu_text(r['cpu'])}")
        rows[str(conns)] = {}
        for v in VARIANTS:
            row = {**median_row(runs[v]), "runs": [round(r["rps"]) for r in runs[v]],
                   "requests": [r["requests"] for r in runs[v]]}
            if v in ("embedded", "redis"):
                row["enqueued"] = [r["enqueued"] for r in runs[v]]
                row["peak_rss"] = max(r["peak_rss"] for r in runs[v])
            rows[str(conns)][v] = row
    return {"rows": rows, "path": PATH, "body_bytes": len(body)}
