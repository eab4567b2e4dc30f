"""Section `tracing`: what exporting traces costs the bridge. The submit
path of section `submit` (POST /api/v1/submit straight to the bridge,
embedded queue, the same body and wrk script), with tracing off (no OTEL_*
variable) and on (OTEL_EXPORTER_OTLP_ENDPOINT at a local sink,
tests/bench/otlp_sink.py, that reads each export and answers 200; default
sampler: every request recorded, two spans a submit).

Runs are interleaved (off, on, off, on, ...), each on a fresh bridge and an
empty queue, checked like section `submit` (queue growth = answers, no
errors). Bridge CPU (utime + stime from /proc) is counted from the start of
wrk until the bridge's exported-span counter has stopped moving (the last
batch leaves up to a second after wrk ends), for off runs over the same
wait, and divided by the requests wrk counted.
"""
import json
import os
import statistics
import sys
import time

from common import (BenchError, ORDER, body_file, cpu_seconds, free_port, get_text, hwm, log, lua_script,
                    metric_sum, require_clean, spawn, stop, wait_http, wrk)
from stack import drop_bridge, fresh_bridge, settle

SUBMIT = {"payload": ORDER, "metadata": {"endpoint": "fast"}}
SPANS_PER_SUBMIT = 2  # bridge SERVER + send <queue> PRODUCER (docs/operations.md, Traces)


class Sink:
    def __init__(self, S):
        self.port = free_port()
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = spawn("otlp-sink", [sys.executable, os.path.join(here, "otlp_sink.py"), str(self.port)],
                          port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/stats", self.proc, timeout=15)

    def stats(self):
        self.proc.check()
        return json.loads(get_text(self.url + "/stats"))


def span_counts(bridge):
    text = bridge.metrics()
    return (int(metric_sum(text, "openhqm_spans_exported_total")),
            int(metric_sum(text, "openhqm_spans_dropped_total")))


def wait_spans(bridge, timeout=6):
    """(exported, dropped) once neither has moved for 1.5 s (the batch
    processor sends at least once a second)."""
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while True:
        now = span_counts(bridge)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.5 or time.monotonic() > deadline:
            return last
        time.sleep(0.1)


def run(S):
    body_path = body_file("submit.json", SUBMIT)
    script = lua_script("post", "report")
    env = {"BENCH_BODY": body_path}
    app_port = free_port()  # the bridge only checks endpoint names; no app needed
    sink = Sink(S)
    try:
        on_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}

        def measure(variant, conns, duration, label):
            space, bridge = fresh_bridge(S, "embedded", app_port, name=f"bridge-tracing-{variant}",
                                         env=on_env if variant == "on" else None)
            try:
                depth0 = bridge.depth()
                sink0 = sink.stats()
                pid, spid = bridge.proc.pid, sink.proc.pid
                c0, s0 = cpu_seconds(pid), cpu_seconds(spid)
                r = wrk(bridge.url + "/api/v1/submit", conns, duration, script, env=env, label=label,
                        watch={"bridge": pid, "otlp-sink": spid})
                require_clean(r, f"tracing {variant}, {conns} connections")
                accepted = settle(bridge, "api")
                exported, dropped = wait_spans(bridge)
                c1, s1 = cpu_seconds(pid), cpu_seconds(spid)
                sink1 = sink.stats()
                enqueued = bridge.depth() - depth0
                if not r["requests"] <= accepted <= enqueued <= r["requests"] + conns:
                    raise BenchError(f"tracing {variant}, {conns} connections: wrk counted {r['requests']} answers, "
                                     f"queue grew by {enqueued}, bridge accepted {accepted}; see {r['log']}")
                if variant == "off" and (exported or dropped or sink1["posts"] != sink0["posts"]):
                    raise BenchError(f"tracing off: the bridge exported {exported} and dropped {dropped} spans")
                if variant == "on" and not exported:
                    raise BenchError(f"tracing on: the bridge exported no spans; see {bridge.proc.log}")
                r.update(accepted=accepted, enqueued=enqueued, exported=exported, dropped=dropped,
                         expected_spans=SPANS_PER_SUBMIT * accepted,
                         sink_posts=sink1["posts"] - sink0["posts"], sink_bytes=sink1["bytes"] - sink0["bytes"],
                         cpu_s=c1 - c0, sink_cpu_s=s1 - s0,
                         cpu_ms_per_1k=(c1 - c0) * 1e6 / r["requests"],
                         sink_cpu_ms_per_1k=(s1 - s0) * 1e6 / r["requests"],
                         peak_rss=hwm(bridge.proc))
                return r
            finally:
                drop_bridge(bridge)

        rows = {}
        for conns in S.tracing_conns:
            measure("off", conns, S.warmup, "tracing-warmup-off")
            measure("on", conns, S.warmup, "tracing-warmup-on")
            runs = {"off": [], "on": []}
            for i in range(S.runs):
                for v in ("off", "on"):
                    r = measure(v, conns, S.duration, f"tracing-{v}-c{conns}")
                    runs[v].append(r)
                    log(f"tracing c={conns} run {i + 1}/{S.runs} {v}: {r['rps']:,.0f} req/s "
                        f"p50 {r['p50']:.2f} p99 {r['p99']:.2f} ms; bridge {r['cpu_ms_per_1k']:.0f} ms CPU "
                        f"per 1,000 requests; spans exported {r['exported']:,} dropped {r['dropped']:,}"
                        + (f" (expected {r['expected_spans']:,})" if v == "on" else ""))
            med = lambda v, k: statistics.median(r[k] for r in runs[v])
            row = {}
            for v in ("off", "on"):
                row[v] = {k: med(v, k) for k in ("rps", "p50", "p99", "cpu_ms_per_1k")}
                row[v].update(runs=[round(r["rps"]) for r in runs[v]],
                              cpu_ms_per_1k_runs=[round(r["cpu_ms_per_1k"], 1) for r in runs[v]],
                              requests=[r["requests"] for r in runs[v]],
                              peak_rss=max(r["peak_rss"] for r in runs[v]),
                              cpu={n: round(statistics.median(r["cpu"].get(n, 0) for r in runs[v]))
                                   for n in ("bridge", "otlp-sink", "wrk")})
            on = runs["on"]
            row["on"].update(exported=sum(r["exported"] for r in on), dropped=sum(r["dropped"] for r in on),
                             expected_spans=sum(r["expected_spans"] for r in on),
                             sink_posts=sum(r["sink_posts"] for r in on), sink_bytes=sum(r["sink_bytes"] for r in on),
                             sink_cpu_ms_per_1k=med("on", "sink_cpu_ms_per_1k"))
            # Paired per run: the on run against the off run just before it.
            paired = [b["cpu_ms_per_1k"] - a["cpu_ms_per_1k"] for a, b in zip(runs["off"], runs["on"])]
            row["paired_cpu_ms_per_1k"] = [round(x, 1) for x in paired]
            row["paired_cpu_ms_per_1k_median"] = statistics.median(paired)
            row["ratio"] = row["on"]["rps"] / row["off"]["rps"]
            rows[str(conns)] = row
        return {"rows": rows, "body_bytes": len(open(body_path, "rb").read()),
                "spans_per_submit": SPANS_PER_SUBMIT}
    finally:
        stop(sink.proc)
