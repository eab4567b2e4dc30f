#!/usr/bin/env python3
"""OpenHQM benchmark (`make bench`): starts everything it needs (sample
app, Envoys with and without the filter, bridges, workers) as processes on
free loopback ports, measures, and rewrites docs/benchmarks.md and the
charts in docs/img/. Raw results are kept in docs/benchmarks.json, so a run
of only some sections (SECTIONS=ingress,submit) refreshes those and keeps
the others.

Settings (environment):
  RUNS=5 DURATION=10 WARMUP=2     runs per figure (median), seconds per run
  SECTIONS=all                    filter,ingress,submit,tracing,drain,wait,footprint,cardinality
  CONNS=32,128 FILTER_CONNS=32    wrk connections
  TRACING_CONNS=32                wrk connections of section tracing (tracing off vs on)
  ENVOY_CONCURRENCY=1 WRK_THREADS=1
  DRAIN_N=20000 DRAIN_WORKERS=1,2,4 WORKER_CONCURRENCY=32 WORKER_BATCH=10
  CARDINALITY_N=1000000 STARTS=max(3,RUNS) IDLE_WAIT=3
  BIN_DIR=<root>/target/release ENVOY=<root>/target/tools/envoy
  WASM=<root>/target/wasm32-wasip1/wasm-release/openhqm_filter.wasm
  REDIS_HOST=127.0.0.1 REDIS_PORT=6379

`--report-only` re-renders docs/benchmarks.md and the charts from
docs/benchmarks.json without measuring.

Python 3.11 standard library + matplotlib (installed into
target/tools/bench-venv on first use).
"""
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
from common import BenchError, DATA, ROOT, log  # noqa: E402

VENV = os.path.join(ROOT, "target", "tools", "bench-venv")
RESULTS = os.path.join(ROOT, "docs", "benchmarks.json")
ORDER = ["filter", "ingress", "submit", "tracing", "drain", "wait", "cardinality", "footprint"]
NEEDS_REDIS = {"ingress", "submit", "drain", "wait", "cardinality", "footprint"}


def ensure_venv():
    """matplotlib from a venv under target/tools (created on first use); re-exec
    this script with its Python if we are not already running there."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        raise SystemExit(f"bench: matplotlib is missing from {VENV}; remove it and run again")
    if not os.path.exists(py) or subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode:
        log(f"installing matplotlib into {os.path.relpath(VENV, ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "matplotlib"], check=True)
    if "--setup-only" in sys.argv:
        return
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


def check_tools(S):
    missing = [t for t in ("wrk", "redis-cli", "redis-benchmark") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)} (apt-get install wrk redis-tools; "
                         "`make bench-build` installs wrk)")


def versions(S):
    def run(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip()
        except OSError:
            return ""
    import re
    envoy = re.search(r"version: \S+/([\d.]+)/", run([S.envoy, "--version"]))
    wrk = re.search(r"wrk (\S+)", run(["wrk", "-v"]))
    redis = re.search(r"redis_version:(\S+)", common.redis_cli("INFO", "server", check=False) if common.redis_up() else "")
    return {"envoy": envoy.group(1) if envoy else "?", "wrk": wrk.group(1) if wrk else "?",
            "redis": redis.group(1) if redis else "not running", "python": sys.version.split()[0]}


def main():
    ensure_venv()
    if "--setup-only" in sys.argv:
        return 0
    if "--report-only" in sys.argv:  # re-render the page and charts from docs/benchmarks.json
        import report
        import charts
        results = json.load(open(RESULTS))
        report.write(results, charts.draw(results))
        return 0
    S = common.Settings()
    common.S = S
    check_tools(S)
    common.take_locks()
    common.reap_leftovers()
    for d in (common.LOGS, common.CONF, common.LUA_OUT, DATA):  # only this run's files
        shutil.rmtree(d, ignore_errors=True)
    common.snapshot(S)
    src_root, src_commit = common.source_commit(S.bin_dir)
    _, harness_commit = common.source_commit(ROOT)

    def cleanup():
        if common.redis_up():
            common.redis_delete_prefix(S.run_id)
        shutil.rmtree(DATA, ignore_errors=True)

    finish = common.install_exit_handlers(cleanup)
    try:
        results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    except ValueError:
        results = {}
    results.setdefault("sections", {})
    run_meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": S.as_dict(),
        "machine": common.machine_info(),
        "versions": versions(S),
        "binaries": {"dir": S.bin_dir, "commit": src_commit,
                     "checkout": src_root, "envoy": S.envoy, "wasm": S.wasm_src},
        "harness_commit": harness_commit,
        "sections": [s for s in ORDER if s in S.sections],
    }
    redis_ok = common.redis_up()
    log(f"run {S.run_id}: sections {','.join(run_meta['sections'])}; RUNS={S.runs} DURATION={S.duration}s; "
        f"binaries from {S.bin_dir} ({src_commit or 'not a git checkout'})")
    failed = []
    import importlib
    for name in run_meta["sections"]:
        t0 = time.monotonic()
        log(f"== section {name}")
        try:
            if name in NEEDS_REDIS and not redis_ok:
                raise BenchError(f"Redis does not answer on {S.redis_host}:{S.redis_port}")
            mod = importlib.import_module(f"sec_{name}")
            res = mod.run(S)
        except BenchError as e:
            res = {"failed": str(e)}
            failed.append(name)
            log(f"section {name} FAILED: {e}")
        except Exception as e:  # a harness bug: report it, keep the other sections
            res = {"failed": f"harness error: {e!r}\n{traceback.format_exc()}"}
            failed.append(name)
            log(f"section {name} FAILED (harness error):\n{traceback.format_exc()}")
        finally:
            common.stop_all()
            if redis_ok:
                common.redis_delete_prefix(S.run_id)
            shutil.rmtree(DATA, ignore_errors=True)
        res["meta"] = {**run_meta, "seconds": round(time.monotonic() - t0),
                       "loadavg_after": common.machine_info()["loadavg"]}
        results["sections"][name] = res
        results["last_run"] = run_meta
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    finish()
    import report
    import charts
    written = charts.draw(results)
    report.write(results, written)
    log(f"wrote docs/benchmarks.md, {os.path.relpath(RESULTS, ROOT)} and {len(written)} charts in docs/img/")
    if failed:
        log(f"sections that failed: {', '.join(failed)} (see docs/benchmarks.md)")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
