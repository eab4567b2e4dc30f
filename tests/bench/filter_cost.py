#!/usr/bin/env python3
"""The OpenHQM filter's cost on a passthrough route (`make bench`).

Runs, in one go on this machine: the sample app (release build, no delay),
Envoy with the shipped envoy/envoy.yaml (filter on) and the same config with
the Wasm filter removed (filter off), both with one worker thread, in front of
the same app. wrk drives GET /healthz, a route the filter inspects but never
captures, alternating between the two Envoys; every figure is the median of
RUNS runs. Writes the table and the exact commands to docs/benchmarks.md.
"""
import os, re, shutil, signal, socket, statistics, subprocess, sys, time, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RUNS = int(os.environ.get("RUNS", "5"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNS = [int(c) for c in os.environ.get("CONNS", "32").split(",")]
WASM = os.path.join(ROOT, "target/wasm32-wasip1/wasm-release/openhqm_filter.wasm")
ENVOY = os.path.join(ROOT, "target/tools/envoy")
APP = os.path.join(ROOT, "target/release/openhqm-sample-app")
WORK = os.path.join(ROOT, ".run/bench")

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_ok(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"bench: {url} did not come up")

PER_ROUTE_DISABLE = """                          typed_per_filter_config:
                            envoy.filters.http.wasm:
                              "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                              disabled: true
"""

def envoy_config(listener, app, admin, variant):
    """variant: "off" (no filter), "every" (filter on every request), or
    "shipped" (as envoy/envoy.yaml: filter skipped on routes it never captures)."""
    text = open(os.path.join(ROOT, "envoy/envoy.yaml")).read()
    text = (text.replace("port_value: 8000", f"port_value: {listener}")
                .replace("port_value: 8080", f"port_value: {app}")
                .replace("port_value: 9901", f"port_value: {admin}")
                .replace("target/wasm32-wasip1/wasm-release/openhqm_filter.wasm", WASM))
    assert PER_ROUTE_DISABLE in text, "envoy.yaml no longer disables the filter per route"
    if variant in ("off", "every"):
        text = text.replace(PER_ROUTE_DISABLE, "")
    if variant == "off":
        start = text.index("                  - name: envoy.filters.http.wasm")
        end = text.index("                  - name: envoy.filters.http.router")
        text = text[:start] + text[end:]
        assert "openhqm_filter" not in text
    return text

def to_ms(value):
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n

def wrk(url, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        sys.exit(f"bench: errors during the run:\n{out}")
    return rps, p50, p99

def main():
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing (apt-get install wrk)")
    os.makedirs(WORK, exist_ok=True)
    app = free_port()
    variants = {"off": free_port(), "every": free_port(), "shipped": free_port()}
    procs = []
    try:
        procs.append(subprocess.Popen([APP, "--port", str(app), "--delay-ms", "0"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for variant, port in variants.items():
            cfg = os.path.join(WORK, f"envoy-{variant}.yaml")
            open(cfg, "w").write(envoy_config(port, app, free_port(), variant))
            procs.append(subprocess.Popen([ENVOY, "-c", cfg, "--disable-hot-restart", "--concurrency", "1",
                                           "--log-level", "error"], stdout=subprocess.DEVNULL,
                                          stderr=open(cfg + ".log", "w")))
        for port in [app, *variants.values()]:
            wait_ok(f"http://127.0.0.1:{port}/healthz")
        results = {}
        for conns in CONNS:
            for port in variants.values():  # warm-up
                subprocess.run(["wrk", "-t1", f"-c{conns}", "-d2s", f"http://127.0.0.1:{port}/healthz"],
                               capture_output=True, check=True)
            runs = {name: [] for name in variants}
            order = list(variants.items())
            for i in range(RUNS):
                # Rotate the order so no variant always runs first.
                for name, port in order[i % len(order):] + order[:i % len(order)]:
                    runs[name].append(wrk(f"http://127.0.0.1:{port}/healthz", conns))
                    print(f"  c={conns} run {i + 1}/{RUNS} {name}: {runs[name][-1][0]:.0f} req/s", flush=True)
            results[conns] = {k: tuple(statistics.median(r[j] for r in v) for j in range(3)) for k, v in runs.items()}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    write_report(results)

def write_report(results):
    size = os.path.getsize(WASM)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout
    envoy_version = re.search(r"version: \S+/([\d.]+)/", envoy_version).group(1)
    lines = [
        "## Filter cost on passthrough routes",
        "",
        f"Envoy {envoy_version} with the OpenHQM filter (V8) versus the same Envoy without it, in front of "
        "the same app, `GET /healthz` (not captured: the filter looks at the request and lets it through). "
        f"One Envoy worker thread each, wrk with one thread, {DURATION} s per run, median of {RUNS} runs, "
        f"alternating the order; {os.cpu_count()} cores ({cpu}), everything on loopback.",
        "",
        "| connections | Envoy | requests/s | p50 ms | p99 ms | throughput vs no filter |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "off": "without the filter",
        "every": "filter on every request",
        "shipped": "filter as shipped (skipped on routes it never captures)",
    }
    for conns, r in results.items():
        base = r["off"][0]
        for name in ("off", "every", "shipped"):
            rps, p50, p99 = r[name]
            delta = "baseline" if name == "off" else f"{(rps - base) / base * 100:+.1f}%"
            lines.append(f"| {conns} | {labels[name]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {delta} |")
    lines += [
        "",
        f"Filter size: {size:,} bytes (`{os.path.relpath(WASM, ROOT)}`, profile `wasm-release`).",
        "",
        "Target: under 10% throughput loss on passthrough routes.",
        "",
        "Where the time goes (measured while tuning): a filter that returns at once from its first callback "
        "already cost 13.8% here - V8 creates a context per stream and crosses into the VM for every callback - "
        "and the OpenHQM logic, which reads only `:method` and `:path` for requests it does not capture, "
        "adds the rest of the \"every request\" row. So with V8 on one worker thread the target is only "
        "reachable by not entering the filter at all: envoy/envoy.yaml disables it per route "
        "(`typed_per_filter_config`, `FilterConfig.disabled`) outside the prefixes it may capture or relay. "
        "Routes whose capture depends on headers cannot be excluded that way and pay the \"every request\" cost.",
        "",
        "Reproduce: `make bench` (or `RUNS=5 DURATION=10 CONNS=32 python3 tests/bench/filter_cost.py` "
        "after `make bench-build`).",
        "",
    ]
    section = "\n".join(lines)
    path = os.path.join(ROOT, "docs/benchmarks.md")
    head = "# Benchmarks\n\nWritten by `make bench`; numbers from the machine it last ran on.\n\n"
    text = open(path).read() if os.path.exists(path) else head
    marker = "## Filter cost on passthrough routes"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    open(path, "w").write(text)
    print(section)

if __name__ == "__main__":
    main()
