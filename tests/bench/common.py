"""Shared machinery of the OpenHQM benchmark (`make bench`): settings,
processes, ports, HTTP probes, wrk, Redis, /proc and Prometheus helpers.

Python 3.11 standard library only (matplotlib is used by charts.py alone).
"""
import atexit
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
WORK = os.path.join(ROOT, ".run", "bench")
LOGS = os.path.join(WORK, "logs")
SNAP = os.path.join(WORK, "bin")
CONF = os.path.join(WORK, "conf")
DATA = os.path.join(WORK, "data")
LUA_OUT = os.path.join(WORK, "lua")
LUA_SRC = os.path.join(HERE, "lua")

BINARIES = ("openhqm-bridge", "openhqm-worker", "openhqm-sample-app")
WASM_REL = "target/wasm32-wasip1/wasm-release/openhqm_filter.wasm"


class BenchError(Exception):
    """A measurement that cannot be trusted (a process died, a port did not
    come up, a request failed): the section stops with this message."""


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise SystemExit(f"bench: {name} must be a whole number, got {os.environ[name]!r}")


def env_list(name, default):
    return [int(x) for x in os.environ.get(name, default).split(",") if x.strip()]


class Settings:
    """Everything a run can be told through the environment."""

    def __init__(self):
        self.runs = env_int("RUNS", 5)
        self.duration = env_int("DURATION", 10)
        self.warmup = env_int("WARMUP", 2)
        self.conns = env_list("CONNS", "32,128")
        self.filter_conns = env_list("FILTER_CONNS", "32")
        self.tracing_conns = env_list("TRACING_CONNS", "32")
        self.envoy_concurrency = env_int("ENVOY_CONCURRENCY", 1)
        self.wrk_threads = env_int("WRK_THREADS", 1)
        self.drain_n = env_int("DRAIN_N", 20000)
        self.drain_workers = env_list("DRAIN_WORKERS", "1,2,4")
        self.worker_concurrency = env_int("WORKER_CONCURRENCY", 32)
        self.worker_batch = env_int("WORKER_BATCH", 10)
        self.cardinality_n = env_int("CARDINALITY_N", 1_000_000)
        self.starts = env_int("STARTS", max(3, self.runs))
        self.idle_wait = env_int("IDLE_WAIT", 3)
        self.redis_host = os.environ.get("REDIS_HOST", "127.0.0.1")
        self.redis_port = env_int("REDIS_PORT", 6379)
        bin_dir = os.environ.get("BIN_DIR", os.path.join(ROOT, "target", "release"))
        self.bin_dir = os.path.abspath(bin_dir)
        self.envoy = os.path.abspath(os.environ.get("ENVOY", os.path.join(ROOT, "target", "tools", "envoy")))
        self.wasm_src = os.path.abspath(os.environ.get("WASM", os.path.join(ROOT, WASM_REL)))
        all_sections = ["filter", "ingress", "submit", "tracing", "drain", "wait", "footprint", "cardinality"]
        wanted = os.environ.get("SECTIONS", "all")
        self.sections = all_sections if wanted in ("", "all") else [s.strip() for s in wanted.split(",") if s.strip()]
        unknown = [s for s in self.sections if s not in all_sections]
        if unknown:
            raise SystemExit(f"bench: unknown section(s) {unknown}; choose from {','.join(all_sections)}")
        # Filled in by snapshot().
        self.bin = {}
        self.wasm = None
        # Every Redis key this run creates starts with this prefix.
        self.run_id = f"openhqm-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def as_dict(self):
        return {
            "RUNS": self.runs, "DURATION": self.duration, "WARMUP": self.warmup,
            "CONNS": ",".join(map(str, self.conns)), "FILTER_CONNS": ",".join(map(str, self.filter_conns)),
            "TRACING_CONNS": ",".join(map(str, self.tracing_conns)),
            "ENVOY_CONCURRENCY": self.envoy_concurrency, "WRK_THREADS": self.wrk_threads,
            "DRAIN_N": self.drain_n, "DRAIN_WORKERS": ",".join(map(str, self.drain_workers)),
            "WORKER_CONCURRENCY": self.worker_concurrency, "WORKER_BATCH": self.worker_batch,
            "CARDINALITY_N": self.cardinality_n, "STARTS": self.starts, "IDLE_WAIT": self.idle_wait,
        }


S = None  # the Settings of this run, set by bench.py


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- binaries

def snapshot(settings):
    """Copy the binaries and the filter into .run/bench/bin, so a rebuild
    while the benchmark runs cannot swap them under it."""
    os.makedirs(SNAP, exist_ok=True)
    missing = [os.path.join(settings.bin_dir, b) for b in BINARIES if not os.path.isfile(os.path.join(settings.bin_dir, b))]
    if not os.path.isfile(settings.wasm_src):
        missing.append(settings.wasm_src)
    if not os.access(settings.envoy, os.X_OK):
        missing.append(settings.envoy)
    if missing:
        raise SystemExit("bench: missing " + ", ".join(missing) +
                         "\n  run `make bench-build`, or point BIN_DIR / WASM / ENVOY at built ones")
    for b in BINARIES:
        dst = os.path.join(SNAP, b)
        tmp = dst + ".tmp"
        shutil.copy2(os.path.join(settings.bin_dir, b), tmp)
        os.replace(tmp, dst)
        settings.bin[b] = dst
    dst = os.path.join(SNAP, "openhqm_filter.wasm")
    shutil.copy2(settings.wasm_src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    settings.wasm = dst


def source_commit(path):
    """`<short sha>[-dirty]` of the git checkout a binary directory is in."""
    d = path if os.path.isdir(path) else os.path.dirname(path)
    try:
        top = subprocess.run(["git", "-C", d, "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
        sha = subprocess.run(["git", "-C", top, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", top, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return top, sha + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None, None


# ---------------------------------------------------------------- processes

class Proc:
    def __init__(self, name, popen, log_path, port=None, spawned_at=None):
        self.name = name
        self.popen = popen
        self.log = log_path
        self.port = port
        self.spawned_at = spawned_at or time.monotonic()
        self.expected_exit = False

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def check(self):
        code = self.popen.poll()
        if code is not None and not self.expected_exit:
            raise BenchError(f"{self.name} (pid {self.pid}) exited with code {code}; see {rel(self.log)}\n"
                             + tail(self.log))


PROCS = []
_seq = [0]


def rel(path):
    return os.path.relpath(path, ROOT)


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()[-lines:]
        return "  | " + "\n  | ".join(text) if text else "  (log is empty)"
    except OSError:
        return ""


def clean_env(extra=None):
    # OTEL_*: only the tracing section turns tracing on, and only where it says.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENHQM_", "OTEL_")) and k != "RUST_LOG"}
    env.update(extra or {})
    return env


def spawn(name, argv, env=None, port=None):
    """Start a process with its output in .run/bench/logs/NNN-name.log; it is
    killed when the benchmark ends, however it ends."""
    os.makedirs(LOGS, exist_ok=True)
    _seq[0] += 1
    log_path = os.path.join(LOGS, f"{_seq[0]:03d}-{name}.log")
    out = open(log_path, "w")
    spawned_at = time.monotonic()
    try:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=ROOT, env=clean_env(env), start_new_session=True)
    except OSError as e:
        raise BenchError(f"cannot start {name} ({argv[0]}): {e}")
    finally:
        out.close()
    p = Proc(name, popen, log_path, port, spawned_at)
    PROCS.append(p)
    _record_pids()
    return p


def stop(p, grace=10):
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if p is None:
        return
    p.expected_exit = True
    if p.popen.poll() is None:
        try:
            p.popen.send_signal(signal.SIGTERM)
            p.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
        except ProcessLookupError:
            pass
    if p in PROCS:
        PROCS.remove(p)
    _record_pids()


def stop_all():
    for p in list(PROCS):
        p.expected_exit = True
        if p.popen.poll() is None:
            try:
                p.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in list(PROCS):
        try:
            p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
    PROCS.clear()
    _record_pids()


PIDFILE = os.path.join(WORK, "pids.json")


def _record_pids():
    """Our children's pids and command lines: if the harness itself is
    SIGKILLed, the next run ends exactly these processes (and nothing else)."""
    try:
        os.makedirs(WORK, exist_ok=True)
        with open(PIDFILE, "w") as f:
            json.dump([{"pid": p.pid, "argv0": p.popen.args[0]} for p in PROCS], f)
    except OSError:
        pass


_locks = []


def take_locks():
    """One benchmark at a time: per checkout (two runs in one .run/bench would
    delete each other's files and end each other's processes) and per
    machine (two at once would measure each other). Held until exit."""
    import fcntl
    os.makedirs(WORK, exist_ok=True)
    for path, what in ((os.path.join(WORK, "lock"), "in this checkout"),
                       ("/tmp/openhqm-bench.lock", "on this machine")):
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise SystemExit(f"bench: another benchmark is running {what} ({holder}); "
                             "wait for it to finish (two at once would spoil each other)")
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, {ROOT}")
        f.flush()
        _locks.append(f)


def reap_leftovers():
    try:
        with open(PIDFILE) as f:
            entries = json.load(f)
    except (OSError, ValueError):
        return
    for e in entries:
        try:
            with open(f"/proc/{e['pid']}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if argv0 == e["argv0"]:
            log(f"ending pid {e['pid']} ({argv0}) left over from an earlier, interrupted run")
            try:
                os.kill(e["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    os.remove(PIDFILE)


def install_exit_handlers(cleanup):
    """Kill every child (and run `cleanup`) on normal exit, exception,
    Ctrl-C and SIGTERM."""
    done = [False]

    def finish():
        if done[0]:
            return
        done[0] = True
        stop_all()
        try:
            cleanup()
        except Exception as e:  # cleanup must never mask the real error
            print(f"bench: cleanup: {e}", file=sys.stderr)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    atexit.register(finish)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    return finish


# ---------------------------------------------------------------- ports, HTTP

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=5):
    """(status, headers dict lower-cased, body bytes); never raises for HTTP
    statuses, raises OSError for connection problems."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_text(url, timeout=5):
    status, _, body = http("GET", url, timeout=timeout)
    if status != 200:
        raise BenchError(f"GET {url} answered {status}")
    return body.decode()


def wait_http(url, proc, timeout=30, interval=0.01):
    """Wait until `url` answers 200; abort if `proc` dies or time runs out.
    Returns the seconds since the process was spawned."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.check()
        try:
            status, _, _ = http("GET", url, timeout=1)
            if status == 200:
                return time.monotonic() - proc.spawned_at if proc else 0.0
        except OSError:
            pass
        if time.monotonic() > deadline:
            where = f"; see {rel(proc.log)}\n{tail(proc.log)}" if proc else ""
            raise BenchError(f"{proc.name if proc else url}: {url} did not answer 200 within {timeout} s{where}")
        time.sleep(interval)


# ---------------------------------------------------------------- /proc

def proc_status(pid):
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError as e:
        raise BenchError(f"cannot read /proc/{pid}/status: {e}")
    return out


def rss(p):
    p.check()
    return proc_status(p.pid)["VmRSS"]


def hwm(p):
    p.check()
    return proc_status(p.pid)["VmHWM"]


def machine_info():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
        "kernel": sh("uname -sr"), "os": sh(". /etc/os-release 2>/dev/null && echo $PRETTY_NAME"),
        "loadavg": sh("cut -d' ' -f1-3 /proc/loadavg"),
    }


# ---------------------------------------------------------------- Prometheus

# Label values may contain braces (route="/api/v1/status/{id}").
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


def metric_sum(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def series_count(text):
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# ---------------------------------------------------------------- Redis

def redis_cli(*args, check=True):
    r = subprocess.run(["redis-cli", "-h", S.redis_host, "-p", str(S.redis_port), *map(str, args)],
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise BenchError(f"redis-cli {' '.join(map(str, args[:3]))} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def redis_up():
    try:
        return redis_cli("PING", check=False) == "PONG"
    except FileNotFoundError:
        return False


def redis_delete_prefix(prefix):
    """Delete every key starting with `prefix` (only this run's keys: the
    prefix carries the run id)."""
    assert prefix.startswith("openhqm-bench-"), prefix
    keys = redis_cli("--scan", "--pattern", prefix + "*").split()
    if keys:
        # One redis-cli reading UNLINK commands from stdin (keys have no spaces).
        script = "".join("UNLINK " + " ".join(keys[i:i + 500]) + "\n" for i in range(0, len(keys), 500))
        r = subprocess.run(["redis-cli", "-h", S.redis_host, "-p", str(S.redis_port)], input=script,
                           capture_output=True, text=True)
        if r.returncode != 0 or "ERR" in r.stdout:
            raise BenchError(f"deleting the benchmark's Redis keys failed: {(r.stderr or r.stdout)[:300]}")
    return len(keys)


def redis_xlen(key):
    return int(redis_cli("XLEN", key) or 0)


# ---------------------------------------------------------------- wrk

def lua_script(*parts):
    """Concatenate tests/bench/lua/<part>.lua files into one wrk script."""
    os.makedirs(LUA_OUT, exist_ok=True)
    name = "-".join(parts) + ".lua"
    out = os.path.join(LUA_OUT, name)
    with open(out, "w") as f:
        for part in parts:
            with open(os.path.join(LUA_SRC, part + ".lua")) as src:
                f.write(src.read() + "\n")
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process so far, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


_redis_pid = [None]


def redis_pid():
    """The Redis server's pid (its CPU time is read, nothing else)."""
    if _redis_pid[0] is None:
        m = re.search(r"process_id:(\d+)", redis_cli("INFO", "server", check=False))
        _redis_pid[0] = int(m.group(1)) if m and os.path.exists(f"/proc/{m.group(1)}") else 0
    return _redis_pid[0] or None


def wrk(url, conns, duration, script, env=None, threads=None, timeout_s="10s", label="", until=None, watch=None):
    """Run wrk with a script whose `done` hook prints one `BENCH_RESULT {json}`
    line (lua/report.lua). Returns a dict with rps, latency percentiles in
    ms, request count and error counts; the raw output is kept in the logs.

    `until`: a callable polled every 50 ms; once it returns true wrk gets
    SIGINT and reports at once. (A script that stops its thread does not end
    wrk: its main thread sleeps for the whole -d.) `duration` is then only
    the upper bound.

    `watch`: {name: pid}; the result's "cpu" gives each one's CPU use during
    the run in % of one core, and wrk's own."""
    threads = threads or S.wrk_threads
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", f"--timeout", timeout_s, "-s", script, url]
    watch = {k: v for k, v in (watch or {}).items() if v}
    cpu0 = {k: cpu_seconds(pid) for k, pid in watch.items()}
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        if until is not None:
            while proc.poll() is None:
                if until():
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.05)
        stdout, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - t0
    cpu = {}
    for k, pid in watch.items():
        c1 = cpu_seconds(pid)
        if c1 is not None and cpu0[k] is not None:
            cpu[k] = round((c1 - cpu0[k]) / wall * 100)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["wrk"] = round((kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) / wall * 100)
    r = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    os.makedirs(LOGS, exist_ok=True)
    _seq[0] += 1
    out_log = os.path.join(LOGS, f"{_seq[0]:03d}-wrk{('-' + label) if label else ''}.log")
    with open(out_log, "w") as f:
        f.write(" ".join(argv) + "\n\n" + r.stdout + "\n" + r.stderr)
    m = re.search(r"^BENCH_RESULT (\{.*\})$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise BenchError(f"wrk failed (exit {r.returncode}); see {rel(out_log)}\n{r.stderr.strip()[:500]}")
    res = json.loads(m.group(1))
    us = lambda k: res[k] / 1000.0
    out = {
        "requests": res["requests"],
        "seconds": res["duration_us"] / 1e6,
        "rps": res["requests"] / (res["duration_us"] / 1e6),
        "p50": us("p50"), "p90": us("p90"), "p99": us("p99"), "p999": us("p999"),
        "mean": us("mean"), "max": us("max"),
        "errors": {k: res["err_" + k] for k in ("connect", "read", "write", "status", "timeout")},
        "statuses": res.get("statuses") or {},
        "cpu": cpu,
        "log": rel(out_log),
        "argv": argv,
    }
    return out


def socket_errors(r):
    e = r["errors"]
    return e["connect"] + e["read"] + e["write"] + e["timeout"]


def require_clean(r, what):
    """No socket errors and no 4xx/5xx in a wrk result."""
    e = r["errors"]
    if socket_errors(r) or e["status"]:
        raise BenchError(f"{what}: wrk saw errors {e} in {r['requests']} requests (non-2xx/3xx: {e['status']}); "
                         f"see {r['log']}")


def median_row(rows, keys=("rps", "p50", "p99", "p90", "mean", "max")):
    out = {k: statistics.median(r[k] for r in rows) for k in keys if all(k in r for r in rows)}
    names = {n for r in rows for n in r.get("cpu", {})}
    if names:
        out["cpu"] = {n: round(statistics.median(r["cpu"].get(n, 0) for r in rows)) for n in sorted(names)}
    return out


def cpu_text(cpu, order=("envoy", "bridge", "workers", "app", "redis", "wrk")):
    """'Envoy 98, bridge 61, ...' in % of one core."""
    names = {"envoy": "Envoy", "redis": "Redis"}
    return ", ".join(f"{names.get(k, k)} {cpu[k]}" for k in order if k in cpu) or "-"


# ---------------------------------------------------------------- payloads

# The small JSON body (~200 bytes) every scenario sends.
ORDER = {
    "order_id": "ord-000123",
    "customer": {"id": "c-42", "tier": "gold"},
    "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
    "total": 42.5,
    "currency": "EUR",
    "note": "openhqm benchmark payload, about two hundred bytes long",
}


def body_file(name, obj):
    os.makedirs(LUA_OUT, exist_ok=True)
    path = os.path.join(LUA_OUT, name)
    with open(path, "w") as f:
        f.write(json.dumps(obj, separators=(",", ":")))
    return path
