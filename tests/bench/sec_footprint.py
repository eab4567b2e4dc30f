"""Section `footprint`: sizes, start-up time and idle memory.

Start-up: from spawn until /health/live answers 200 (polled every 2 ms),
median of STARTS starts, each on a fresh queue. Idle RSS: VmRSS IDLE_WAIT
seconds after that. Peak RSS under load is VmHWM of the processes of the
submit and drain sections (reported with those).
"""
import os
import statistics
import time

from common import BINARIES, free_port, log, rss, spawn, stop, wait_http
from stack import QueueSpace

COMPONENTS = (("bridge", "embedded"), ("bridge", "redis"), ("worker", "embedded"), ("worker", "redis"))


def one_start(S, component, backend):
    """Spawn one bridge or worker on a fresh queue; (start-up s, idle RSS)."""
    space = QueueSpace(S, backend)
    app_port, port = free_port(), free_port()
    try:
        if component == "bridge":
            cfg = space.write_config(app_port, port, name="bridge")
            proc = spawn(f"bridge-{backend}-start", [S.bin["openhqm-bridge"], "--config", cfg], port=port)
            url = f"http://127.0.0.1:{port}/health/live"
        else:
            cfg = space.write_config(app_port, name="worker")
            proc = spawn(f"worker-{backend}-start", [S.bin["openhqm-worker"], "--config", cfg],
                         env={"OPENHQM_WORKER__ADMIN_PORT": str(port)}, port=port)
            url = f"http://127.0.0.1:{port}/health/live"
        try:
            startup = wait_http(url, proc, timeout=30, interval=0.002)
            time.sleep(S.idle_wait)
            return startup, rss(proc)
        finally:
            stop(proc)
    finally:
        space.cleanup()


def run(S):
    out = {"sizes": {b: os.path.getsize(S.bin[b]) for b in BINARIES}, "wasm_bytes": os.path.getsize(S.wasm),
           "starts": S.starts, "idle_wait": S.idle_wait, "components": {}}
    for component, backend in COMPONENTS:
        startups, idles = [], []
        for i in range(S.starts):
            s, r = one_start(S, component, backend)
            startups.append(s)
            idles.append(r)
        out["components"][f"{component}-{backend}"] = {
            "startup_ms": statistics.median(startups) * 1000,
            "startup_runs_ms": [round(s * 1000, 1) for s in startups],
            "idle_rss": statistics.median(idles),
        }
        log(f"footprint {component} ({backend}): start-up {statistics.median(startups) * 1000:.1f} ms, "
            f"idle RSS {statistics.median(idles) / 2**20:.1f} MiB")
    return out
