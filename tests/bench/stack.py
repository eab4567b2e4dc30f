"""The OpenHQM processes of the benchmark: the sample app, bridges and
workers, each with its own queue namespace so runs never see each other's
messages (Redis: keys prefixed with the run id; embedded: a fresh data dir).
"""
import itertools
import json
import os
import shutil
import time

from common import (CONF, DATA, BenchError, free_port, get_text, http, log, metric_sum, redis_delete_prefix,
                    redis_xlen, spawn, stop, wait_http)

_gen = itertools.count(1)


class QueueSpace:
    """One empty queue + result store: Redis keys `<run id>-<n>...`, or an
    embedded data directory. `cleanup()` deletes exactly what it created."""

    def __init__(self, S, backend):
        if backend not in ("embedded", "redis"):
            raise ValueError(backend)
        self.S = S
        self.backend = backend
        self.tag = f"{S.run_id}-{next(_gen)}"
        self.data_dir = os.path.join(DATA, self.tag)
        self.request_queue = f"{self.tag}-requests"

    def config(self, app_port, bridge_port=None):
        S = self.S
        redis_url = f"redis://{S.redis_host}:{S.redis_port}"
        queue = {
            "type": self.backend,
            "request_queue_name": self.request_queue,
            "response_queue_name": f"{self.tag}-responses",
            "dlq_name": f"{self.tag}-dlq",
        }
        if self.backend == "redis":
            queue.update(redis_url=redis_url, redis_consumer_group=f"{self.tag}-workers")
            cache = {"type": "redis", "redis_url": redis_url, "key_prefix": self.tag}
        else:
            queue.update(data_dir=self.data_dir)
            cache = {"type": "embedded"}
        return {
            "server": {"host": "127.0.0.1", "port": bridge_port or free_port()},
            "queue": queue,
            "cache": cache,
            "worker": {
                # Stated in docs/benchmarks.md; WORKER_CONCURRENCY / WORKER_BATCH.
                "concurrency": S.worker_concurrency,
                "batch_size": S.worker_batch,
                "shutdown_grace_seconds": 2,
                "admin_host": "127.0.0.1",
                "admin_port": 0,
            },
            "proxy": {
                "enabled": True,
                # Captured requests are replayed on this base URL (path kept).
                "default_endpoint": "app",
                # No max_concurrency, rate_limit or circuit_breaker: nothing
                # in the worker caps the pace (docs: proxy.endpoints).
                "endpoints": {
                    "app": {"url": f"http://127.0.0.1:{app_port}", "timeout": 30},
                    "fast": {"url": f"http://127.0.0.1:{app_port}/echo/drain", "method": "POST", "timeout": 30},
                },
            },
            "monitoring": {"log_level": "INFO", "log_format": "json"},
        }

    def write_config(self, app_port, bridge_port=None, name="openhqm"):
        os.makedirs(CONF, exist_ok=True)
        path = os.path.join(CONF, f"{name}-{self.tag}.yaml")
        # JSON is YAML: no YAML library needed.
        with open(path, "w") as f:
            json.dump(self.config(app_port, bridge_port), f, indent=2)
        return path

    def redis_depth(self):
        return redis_xlen(self.request_queue) if self.backend == "redis" else None

    def cleanup(self):
        if self.backend == "redis":
            redis_delete_prefix(self.tag)
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Bridge:
    def __init__(self, S, space, app_port, port=None, name=None, env=None):
        self.S, self.space = S, space
        self.port = port or free_port()
        self.config = space.write_config(app_port, self.port, name="bridge")
        self.proc = spawn(name or f"bridge-{space.backend}", [S.bin["openhqm-bridge"], "--config", self.config],
                          env=env, port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        # /health answers 200 once the queue and the result store answer.
        self.ready_after = wait_http(self.url + "/health", self.proc, timeout=30)

    def metrics(self):
        self.proc.check()
        return get_text(self.url + "/metrics")

    def depth(self):
        """Ready messages in the request queue, from the bridge's /metrics."""
        return int(metric_sum(self.metrics(), "openhqm_queue_depth", queue=self.space.request_queue, state="ready"))

    def depth_total(self):
        text = self.metrics()
        return int(metric_sum(text, "openhqm_queue_depth", queue=self.space.request_queue))

    def accepted(self, source=None):
        labels = {"source": source} if source else {}
        return int(metric_sum(self.metrics(), "openhqm_requests_accepted_total", **labels))

    def stop(self):
        stop(self.proc)


class Worker:
    def __init__(self, S, space, app_port, index=0, wait=True):
        self.admin_port = free_port()
        self.config = space.write_config(app_port, name="worker")
        self.proc = spawn(f"worker-{space.backend}-{index}", [S.bin["openhqm-worker"], "--config", self.config],
                          env={"OPENHQM_WORKER__ADMIN_PORT": str(self.admin_port)}, port=self.admin_port)
        self.url = f"http://127.0.0.1:{self.admin_port}"
        if wait:
            self.wait_ready()

    def wait_ready(self):
        return wait_http(self.url + "/health/ready", self.proc, timeout=30)

    def metrics_or_empty(self):
        self.proc.check()
        try:
            status, _, body = http("GET", self.url + "/metrics", timeout=2)
            return body.decode() if status == 200 else ""
        except OSError:
            return ""

    def stop(self):
        stop(self.proc)


class App:
    """The sample app with no delay and no request log (`--no-log`): the
    fast backend of every scenario."""

    def __init__(self, S):
        self.port = free_port()
        self.proc = spawn("sample-app", [S.bin["openhqm-sample-app"], "--port", str(self.port), "--delay-ms", "0",
                                          "--no-log"],
                          port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/healthz", self.proc, timeout=30)


def fresh_bridge(S, backend, app_port, port=None, name=None, env=None):
    """A bridge on a new, empty queue space; returns (space, bridge). `env`:
    extra environment variables (the tracing section's OTEL_*)."""
    space = QueueSpace(S, backend)
    return space, Bridge(S, space, app_port, port=port, name=name, env=env)


def drop_bridge(bridge):
    if bridge is None:
        return
    bridge.stop()
    bridge.space.cleanup()


def settle(bridge, source, timeout=5):
    """The bridge's accepted count (`source`: filter or api) once it has
    not moved for 0.3 s: requests in flight when wrk stopped still finish."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = bridge.accepted(source)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 0.3:
            break
        time.sleep(0.05)
    return last
