"""Section `drain`: how fast workers empty a backlog.

N messages (DRAIN_N) are submitted through the bridge with no worker
running (exactly N: lua/preload.lua), then K worker processes are spawned at
once, each with its own admin port, proxying every message to
POST /echo/drain on the sample app. msgs/s = N / (time from spawning the
workers until the sum of openhqm_worker_messages_total{outcome="completed"}
over their /metrics reaches N), polled every 50 ms; worker start-up is
included. Every message must complete exactly once, nothing may fail, and
the queue must be empty afterwards.

Baseline: wrk sending the same request straight to the app at the
workers' total concurrency (K x worker.concurrency).
"""
import json
import time

from common import (BenchError, ORDER, body_file, cpu_seconds, cpu_text, http, hwm, log, lua_script, median_row,
                    metric_sum, redis_pid, require_clean, series_count, wrk)
from stack import App, Worker, drop_bridge, fresh_bridge
from sec_submit import SUBMIT

POLL = 0.05


def preload(S, bridge, n, script, env):
    r = wrk(bridge.url + "/api/v1/submit", 32, int(max(60, n / 200)), script, env={**env, "BENCH_LIMIT": str(n)},
            threads=1, label=f"drain-preload-{bridge.space.backend}",
            until=lambda: bridge.accepted("api") >= n)
    if r["statuses"] != {"202": n} or r["errors"]["connect"] or r["errors"]["timeout"]:
        raise BenchError(f"drain preload: expected {n} x 202, got {r['statuses']} errors {r['errors']}; "
                         f"see {r['log']}")
    depth = bridge.depth()
    if depth != n:
        raise BenchError(f"drain preload: {n} accepted but the queue holds {depth}; see {bridge.proc.log}")
    return r


def drain_once(S, app, backend, k, pre_script, env):
    n = S.drain_n
    space, bridge = fresh_bridge(S, backend, app.port, name=f"bridge-drain-{backend}")
    workers = []
    try:
        pre = preload(S, bridge, n, pre_script, env)
        rpid = redis_pid() if backend == "redis" else None
        others = {"app": app.proc.pid, "redis": rpid}
        cpu0 = {k: cpu_seconds(pid) for k, pid in others.items() if pid}
        t0 = time.monotonic()
        workers = [Worker(S, space, app.port, index=i, wait=False) for i in range(k)]
        deadline = t0 + max(120, n / 100)
        completed, texts = 0, []
        while True:
            texts = [w.metrics_or_empty() for w in workers]
            completed = sum(metric_sum(t, "openhqm_worker_messages_total", outcome="completed") for t in texts)
            if completed >= n:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"drain {backend} K={k}: only {completed:.0f} of {n} completed after "
                                 f"{deadline - t0:.0f} s; see {', '.join(w.proc.log for w in workers)}")
            app.proc.check()
            time.sleep(POLL)
        t1 = time.monotonic()
        cpu = {k: round((cpu_seconds(others[k]) - c) / (t1 - t0) * 100) for k, c in cpu0.items()}
        cpu["workers"] = round(sum(cpu_seconds(w.proc.pid) or 0 for w in workers) / (t1 - t0) * 100)
        outcomes = sum(metric_sum(t, "openhqm_worker_messages_total") for t in texts)
        app.proc.check()
        # Acks follow the counter closely: give the queue a moment to be empty.
        left = None
        for _ in range(100):
            left = bridge.depth_total()
            if left == 0:
                break
            time.sleep(0.05)
        problems = []
        if completed != n:
            problems.append(f"{completed:.0f} completions for {n} messages (duplicates)")
        if outcomes != completed:
            problems.append(f"{outcomes - completed:.0f} messages settled otherwise than completed")
        if left:
            problems.append(f"{left} messages still in the queue")
        if problems:
            raise BenchError(f"drain {backend} K={k}: " + "; ".join(problems) +
                             f"; see {', '.join(w.proc.log for w in workers)}")
        return {
            "rate": n / (t1 - t0), "seconds": t1 - t0, "n": n, "preload_rps": pre["rps"],
            "peak_rss": max(hwm(w.proc) for w in workers),
            "metrics": {"bytes": len(texts[0].encode()), "series": series_count(texts[0])},
            "cpu": cpu,
        }
    finally:
        for w in workers:
            w.stop()
        drop_bridge(bridge)


def early_worker_metrics(S, app):
    """A worker's /metrics when ready (no message yet) and after its first
    10 messages: with the figure after a whole drain, this shows whether
    /metrics grows with the number of messages or only once."""
    space, bridge = fresh_bridge(S, "redis", app.port, name="bridge-drain-metrics")
    w = None
    try:
        w = Worker(S, space, app.port, index=0)
        time.sleep(0.5)
        ready = w.metrics_or_empty()
        body = json.dumps(SUBMIT).encode()
        for _ in range(10):
            status, _, _ = http("POST", bridge.url + "/api/v1/submit", body, {"content-type": "application/json"})
            if status != 202:
                raise BenchError(f"drain: a submit answered {status}; see {bridge.proc.log}")
        deadline = time.monotonic() + 30
        while metric_sum(w.metrics_or_empty(), "openhqm_worker_messages_total", outcome="completed") < 10:
            if time.monotonic() > deadline:
                raise BenchError(f"drain: 10 messages not completed in 30 s; see {w.proc.log}")
            time.sleep(0.05)
        time.sleep(0.2)
        ten = w.metrics_or_empty()
        return {"ready": {"bytes": len(ready.encode()), "series": series_count(ready)},
                "ten": {"bytes": len(ten.encode()), "series": series_count(ten)}}
    finally:
        if w:
            w.stop()
        drop_bridge(bridge)


def run(S):
    app = App(S)
    pre_script = lua_script("post", "preload", "report")
    post_script = lua_script("post", "report")
    env = {"BENCH_BODY": body_file("submit.json", SUBMIT)}
    base_env = {"BENCH_BODY": body_file("order.json", ORDER)}
    out = {"n": S.drain_n, "workers": S.drain_workers, "concurrency": S.worker_concurrency,
           "batch": S.worker_batch, "redis": {}, "embedded": {}, "baseline": {}}
    out["worker_metrics_early"] = early_worker_metrics(S, app)
    for backend in ("redis", "embedded"):
        try:
            for k in S.drain_workers:
                if k == S.drain_workers[0]:  # warm-up (page cache, Redis, the app)
                    drain_once(S, app, backend, k, pre_script, env)
                runs = []
                for i in range(S.runs):
                    r = drain_once(S, app, backend, k, pre_script, env)
                    runs.append(r)
                    log(f"drain {backend} K={k} run {i + 1}/{S.runs}: {r['rate']:,.0f} msgs/s "
                        f"({r['n']} in {r['seconds']:.2f} s), preload {r['preload_rps']:,.0f} req/s; "
                        f"CPU % {cpu_text(r['cpu'])}")
                out[backend][str(k)] = {
                    "rate": median_row(runs, keys=("rate",))["rate"],
                    "seconds": median_row(runs, keys=("seconds",))["seconds"],
                    "runs": [round(r["rate"]) for r in runs],
                    "cpu": median_row(runs, keys=())["cpu"],
                    "peak_rss": max(r["peak_rss"] for r in runs),
                    "metrics": runs[-1]["metrics"],
                }
        except BenchError as e:
            if backend == "redis":
                raise
            # The embedded backend is optional here: report what happened.
            out["embedded"]["failed"] = str(e)
            log(f"drain embedded failed: {e}")
    for k in S.drain_workers:
        conns = k * S.worker_concurrency
        runs = []
        for i in range(S.runs):
            r = wrk(f"{app.url}/echo/drain", conns, S.duration, post_script, env=base_env,
                    label=f"drain-baseline-c{conns}", watch={"app": app.proc.pid})
            require_clean(r, f"drain baseline, {conns} connections")
            runs.append(r)
            log(f"drain baseline c={conns} run {i + 1}/{S.runs}: {r['rps']:,.0f} req/s")
        out["baseline"][str(k)] = {**median_row(runs), "conns": conns, "runs": [round(r["rps"]) for r in runs]}
    return out
