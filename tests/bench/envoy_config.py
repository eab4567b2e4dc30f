"""Envoy configurations of the benchmark, each derived from the shipped
envoy/envoy.yaml by string replacement (as filter_cost.py always did), so
the benchmark measures the config users run, and breaks loudly when its
shape changes instead of silently measuring something else.

Variants:
  shipped   envoy/envoy.yaml as it is (filter skipped on routes it never captures)
  every     the filter runs on every request (per-route disable removed)
  off       the Wasm filter removed from the chain
  direct    no filter; POST /echo/* answered 202 by Envoy itself (direct_response,
            after the buffer filter has read the body)
  app       no filter; /echo/* proxied to the app
  capture   shipped + the filter captures POST /echo/async (async) and
            POST /echo/wait (wait mode), /echo/* routed with the filter on
"""
import os

from common import ROOT, BenchError, free_port, get_text, spawn, wait_http

PER_ROUTE_DISABLE = """                          typed_per_filter_config:
                            envoy.filters.http.wasm:
                              "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                              disabled: true
"""
FILTER_START = "                  - name: envoy.filters.http.wasm"
FILTER_END = "                  - name: envoy.filters.http.router"
ROUTES_ANCHOR = '                        - match: { prefix: "/orders" }\n'
ECHO_ROUTE = ('                        - match: { prefix: "/echo/" }\n'
              '                          route: { cluster: app, timeout: 60s }\n')
ECHO_DIRECT = ('                        - match: { prefix: "/echo/" }\n'
               '                          direct_response:\n'
               '                            status: 202\n'
               '                            body: { inline_string: \'{"status":"PENDING"}\' }\n')
FILTER_ROUTES_ANCHOR = '"routes": ['
# An HTTP/1.1 response sent before the request body has been read makes
# Envoy close the connection: direct_response alone would measure a new TCP
# connection per request. The buffer filter reads the whole body first, as
# the capture filter does.
BUFFER_FILTER = ('                  - name: envoy.filters.http.buffer\n'
                 '                    typed_config:\n'
                 '                      "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer\n'
                 '                      max_request_bytes: 1048576\n')
BENCH_FILTER_ROUTES = (
    '{"name": "bench-async", "prefix": "/echo/async", "methods": ["POST"]}, '
    '{"name": "bench-wait", "prefix": "/echo/wait", "methods": ["POST"], "mode": "wait", "wait_ms": 10000}, '
)

VARIANTS = ("shipped", "every", "off", "direct", "app", "capture")


def _require(text, anchor, what):
    if anchor not in text:
        raise BenchError(f"envoy/envoy.yaml changed shape ({what} not found); update tests/bench/envoy_config.py")


def render(variant, listener, app, bridge, admin, wasm):
    text = open(os.path.join(ROOT, "envoy/envoy.yaml")).read()
    for anchor, what in ((PER_ROUTE_DISABLE, "the per-route filter disable"), (FILTER_START, "the Wasm filter"),
                         (FILTER_END, "the router filter"), (ROUTES_ANCHOR, "the /orders route"),
                         (FILTER_ROUTES_ANCHOR, "the filter's routes")):
        _require(text, anchor, what)
    for old, new in (("port_value: 8000", listener), ("port_value: 8080", app),
                     ("port_value: 9000", bridge), ("port_value: 9901", admin)):
        _require(text, old, old)
        text = text.replace(old, f"port_value: {new}")
    text = text.replace("target/wasm32-wasip1/wasm-release/openhqm_filter.wasm", wasm)
    if variant in ("every", "off", "direct", "app"):
        text = text.replace(PER_ROUTE_DISABLE, "")
    if variant in ("off", "direct", "app"):
        start, end = text.index(FILTER_START), text.index(FILTER_END)
        text = text[:start] + text[end:]
        assert "openhqm_filter" not in text
    if variant in ("app", "capture"):
        text = text.replace(ROUTES_ANCHOR, ECHO_ROUTE + ROUTES_ANCHOR, 1)
    if variant == "direct":
        text = text.replace(ROUTES_ANCHOR, ECHO_DIRECT + ROUTES_ANCHOR, 1)
        text = text.replace(FILTER_END, BUFFER_FILTER + FILTER_END, 1)
    if variant == "capture":
        text = text.replace(FILTER_ROUTES_ANCHOR, FILTER_ROUTES_ANCHOR + BENCH_FILTER_ROUTES, 1)
    return text


def start(S, variant, app_port, bridge_port, name=None, concurrency=None):
    """An Envoy of `variant` on a free port; returns the Proc (with .port)."""
    from common import CONF
    name = name or f"envoy-{variant}"
    listener, admin = free_port(), free_port()
    os.makedirs(CONF, exist_ok=True)
    path = os.path.join(CONF, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(render(variant, listener, app_port, bridge_port or free_port(), admin, S.wasm))
    p = spawn(name, [S.envoy, "-c", path, "--disable-hot-restart", "--concurrency",
                     str(concurrency or S.envoy_concurrency), "--log-level", "warn"], port=listener)
    p.admin = admin
    p.config = path
    wait_http(f"http://127.0.0.1:{admin}/ready", p, timeout=60)
    return p


def downstream_connections(p):
    """Connections Envoy has accepted on the listener so far."""
    text = get_text(f"http://127.0.0.1:{p.admin}/stats?filter=http.ingress_http.downstream_cx_total")
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "http.ingress_http.downstream_cx_total":
            return int(value)
    raise BenchError(f"{p.name}: no downstream_cx_total in its stats; see {p.log}")


def check_keepalive(p, before, conns, requests, what):
    """wrk keeps its connections open; an Envoy that closes them would make
    the run measure TCP set-up instead of requests."""
    opened = downstream_connections(p) - before
    if opened > 2 * conns + 5:
        raise BenchError(f"{what}: Envoy accepted {opened} connections for {requests} requests from {conns} "
                         f"keep-alive connections (it is closing them); see {p.config}")
    return opened
