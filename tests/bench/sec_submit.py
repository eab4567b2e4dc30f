"""Section `submit`: POST /api/v1/submit straight to the bridge (embedded
and Redis), next to redis-benchmark XADD-ing the very entry the bridge
writes, with the same number of clients on the same Redis.

Each bridge run starts from an empty queue; afterwards the queue must have
grown by the requests wrk counted (+ at most one per connection in flight),
with no non-2xx answers.
"""
import json
import re
import resource
import subprocess
import time

from common import (BenchError, LOGS, ORDER, body_file, cpu_seconds, cpu_text, free_port, http, hwm, log,
                    lua_script, median_row, redis_cli, redis_pid, rel, require_clean, wrk)
import common
from stack import drop_bridge, fresh_bridge, settle

SUBMIT = {"payload": ORDER, "metadata": {"endpoint": "fast"}}


def sample_entry(S):
    """The fields of one stream entry exactly as the Redis bridge writes it."""
    space, bridge = fresh_bridge(S, "redis", free_port(), name="bridge-redis-sample")
    try:
        status, _, _ = http("POST", bridge.url + "/api/v1/submit", json.dumps(SUBMIT).encode(),
                            {"content-type": "application/json"})
        if status != 202:
            raise BenchError(f"submit: a single submit answered {status}")
        out = redis_cli("--json", "XRANGE", space.request_queue, "-", "+", "COUNT", "1")
        entries = json.loads(out)
        fields = entries[0][1]
        if isinstance(fields, dict):  # RESP3 maps
            fields = [x for kv in fields.items() for x in kv]
        return fields
    finally:
        drop_bridge(bridge)


def redis_benchmark(S, conns, n, key, fields, label):
    argv = ["redis-benchmark", "-h", S.redis_host, "-p", str(S.redis_port), "-c", str(conns), "-n", str(n),
            "--csv", "XADD", key, "*", *fields]
    rpid = redis_pid()
    c0 = cpu_seconds(rpid) if rpid else None
    k0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {"redis-benchmark": round((k1.ru_utime + k1.ru_stime - k0.ru_utime - k0.ru_stime) / seconds * 100)}
    if c0 is not None:
        cpu["redis"] = round((cpu_seconds(rpid) - c0) / seconds * 100)
    common._seq[0] += 1
    path = f"{LOGS}/{common._seq[0]:03d}-redis-benchmark-{label}.log"
    with open(path, "w") as f:
        f.write(" ".join(argv[:12]) + " <fields>\n\n" + r.stdout + r.stderr)
    # The CSV's first column repeats the command, JSON quotes and all:
    # take the seven numbers at the end of the last line.
    last = [l for l in r.stdout.splitlines() if l.strip()][-1:] or [""]
    nums = re.findall(r'"([\d.]+)"', last[0])[-7:]
    if r.returncode != 0 or len(nums) != 7:
        raise BenchError(f"redis-benchmark failed (exit {r.returncode}); see {rel(path)}")
    rps, avg, mn, p50, p95, p99, mx = map(float, nums)
    added = int(redis_cli("XLEN", key))
    redis_cli("DEL", key)
    if added != n:
        raise BenchError(f"redis-benchmark: {n} XADDs left {added} entries; see {rel(path)}")
    return {"rps": rps, "p50": p50, "p99": p99, "mean": avg, "max": mx, "requests": n, "seconds": seconds,
            "log": rel(path), "cpu": cpu}


def run(S):
    body_path = body_file("submit.json", SUBMIT)
    script = lua_script("post", "report")
    env = {"BENCH_BODY": body_path}
    app_port = free_port()  # the bridge only checks endpoint names; no app needed
    fields = sample_entry(S)
    entry_bytes = sum(len(f.encode()) for f in fields)
    xadd_key = f"{S.run_id}-xadd"
    rows = {}

    def measure_bridge(backend, conns, duration, label):
        space, bridge = fresh_bridge(S, backend, app_port, name=f"bridge-{backend}")
        try:
            depth0 = bridge.depth()
            r = wrk(bridge.url + "/api/v1/submit", conns, duration, script, env=env, label=label,
                    watch={"bridge": bridge.proc.pid, "redis": redis_pid() if backend == "redis" else None})
            require_clean(r, f"submit {backend}, {conns} connections")
            accepted = settle(bridge, "api")  # requests in flight when wrk stopped
            enqueued = bridge.depth() - depth0
            # As in ingress: in-flight requests (<= 1 per connection) may be
            # queued too; a submit whose client left may publish uncounted.
            if not r["requests"] <= accepted <= enqueued <= r["requests"] + conns:
                raise BenchError(f"submit {backend}, {conns} connections: wrk counted {r['requests']} answers, "
                                 f"queue grew by {enqueued}, bridge accepted {accepted}; see {r['log']}")
            if backend == "redis" and space.redis_depth() != enqueued + depth0:
                raise BenchError(f"submit redis: XLEN {space.redis_depth()} != {enqueued + depth0}")
            r["enqueued"], r["accepted"] = enqueued, accepted
            r["peak_rss"] = hwm(bridge.proc)
            return r
        finally:
            drop_bridge(bridge)

    for conns in S.conns:
        measure_bridge("embedded", conns, S.warmup, "submit-warmup-embedded")
        measure_bridge("redis", conns, S.warmup, "submit-warmup-redis")
        # Calibrate redis-benchmark's request count to about DURATION seconds.
        cal = redis_benchmark(S, conns, 20000, xadd_key, fields, "calibrate")
        n = max(20000, int(cal["rps"] * S.duration))
        variants = ("embedded", "redis", "xadd")
        runs = {v: [] for v in variants}
        for i in range(S.runs):
            for v in variants[i % 3:] + variants[:i % 3]:
                if v == "xadd":
                    r = redis_benchmark(S, conns, n, xadd_key, fields, f"c{conns}")
                else:
                    r = measure_bridge(v, conns, S.duration, f"submit-{v}-c{conns}")
                runs[v].append(r)
                log(f"submit c={conns} run {i + 1}/{S.runs} {v}: {r['rps']:,.0f} req/s "
                    f"p50 {r['p50']:.2f} p99 {r['p99']:.2f} ms; CPU % {cpu_text(r['cpu'], ('bridge', 'redis', 'wrk', 'redis-benchmark'))}")
        rows[str(conns)] = {}
        for v in variants:
            row = {**median_row(runs[v], keys=("rps", "p50", "p99", "mean", "max")),
                   "runs": [round(r["rps"]) for r in runs[v]], "requests": [r["requests"] for r in runs[v]]}
            if v != "xadd":
                row["peak_rss"] = max(r["peak_rss"] for r in runs[v])
            rows[str(conns)][v] = row
    return {"rows": rows, "body_bytes": len(open(body_path, "rb").read()), "entry_bytes": entry_bytes,
            "entry_fields": fields[0::2]}
