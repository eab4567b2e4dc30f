"""PNG charts for docs/benchmarks.md (matplotlib, Agg backend)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import ROOT  # noqa: E402

IMG = os.path.join(ROOT, "docs", "img")
MIB = 2 ** 20
COLORS = {"direct": "#9e9e9e", "app": "#4c72b0", "embedded": "#dd8452", "redis": "#c44e52",
          "xadd": "#8172b3", "off": "#4c72b0", "every": "#c44e52", "shipped": "#55a868", "wait": "#c44e52"}

INGRESS_LABELS = {"direct": "Envoy 202\n(direct_response)", "app": "Envoy -> app\n(no filter)",
                  "embedded": "filter -> bridge\nembedded", "redis": "filter -> bridge\nRedis"}
SUBMIT_LABELS = {"embedded": "bridge submit\nembedded", "redis": "bridge submit\nRedis",
                 "xadd": "redis-benchmark\nXADD"}
FILTER_LABELS = {"off": "no filter", "every": "filter on\nevery request", "shipped": "filter as shipped"}


def _ok(results, name):
    sec = results.get("sections", {}).get(name)
    return sec if sec and "failed" not in sec else None


def _save(fig, name, written):
    os.makedirs(IMG, exist_ok=True)
    path = os.path.join(IMG, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(name)


def _bars(ax, rows, order, labels, title, value="rps", note=lambda r: f"p99 {r['p99']:.1f} ms"):
    names = [v for v in order if v in rows]
    vals = [rows[v][value] for v in names]
    bars = ax.bar(range(len(names)), vals, color=[COLORS.get(v, "#777") for v in names])
    ax.set_xticks(range(len(names)), [labels[v] for v in names], fontsize=8)
    ax.set_title(title, fontsize=10)
    top = max(vals) if vals else 1
    ax.set_ylim(0, top * 1.22)
    for b, v in zip(bars, names):
        ax.annotate(f"{rows[v][value]:,.0f}\n{note(rows[v])}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7.5, xytext=(0, 2), textcoords="offset points")
    ax.grid(axis="y", alpha=0.3)


def ingress(results, written):
    sec = _ok(results, "ingress")
    if not sec:
        return
    conns = sorted(sec["rows"], key=int)
    fig, axes = plt.subplots(1, len(conns), figsize=(5.2 * len(conns), 4.2), squeeze=False)
    for ax, c in zip(axes[0], conns):
        _bars(ax, sec["rows"][c], ("direct", "app", "embedded", "redis"), INGRESS_LABELS,
              f"POST {sec.get('path', '')}, {c} connections")
        ax.set_ylabel("requests/s (median)")
    fig.suptitle("Async ingress through Envoy (p99 latency on each bar)", fontsize=11)
    _save(fig, "ingress.png", written)


def submit(results, written):
    sec = _ok(results, "submit")
    if not sec:
        return
    conns = sorted(sec["rows"], key=int)
    fig, axes = plt.subplots(1, len(conns), figsize=(4.6 * len(conns), 4.2), squeeze=False)
    for ax, c in zip(axes[0], conns):
        _bars(ax, sec["rows"][c], ("embedded", "redis", "xadd"), SUBMIT_LABELS, f"{c} clients")
        ax.set_ylabel("requests/s (median)")
    fig.suptitle("POST /api/v1/submit vs. XADD of the same entry (p99 on each bar)", fontsize=11)
    _save(fig, "submit.png", written)


def drain(results, written):
    sec = _ok(results, "drain")
    if not sec:
        return
    ks = [int(k) for k in sec.get("workers", [])]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for backend in ("redis", "embedded"):
        data = sec.get(backend, {})
        pts = [(k, data[str(k)]["rate"]) for k in ks if str(k) in data]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=COLORS[backend],
                    label=f"workers, {backend}")
            for k, v in pts:
                ax.annotate(f"{v:,.0f}", (k, v), xytext=(4, 4), textcoords="offset points", fontsize=8)
    base = sec.get("baseline", {})
    pts = [(k, base[str(k)]["rps"]) for k in ks if str(k) in base]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="--", color="#4c72b0", marker="s",
                label=f"wrk straight to the app (K x {sec.get('concurrency')} connections)")
    ax.axhline(5000, color="#55a868", linestyle=":", label="target, 1 worker on Redis: 5,000/s")
    ax.set_xticks(ks)
    ax.set_xlabel("worker processes (K)")
    ax.set_ylabel("messages/s (median)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Draining {sec.get('n', 0):,} queued messages to a fast backend", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, "drain.png", written)


def footprint(results, written):
    from report import peaks
    fp = _ok(results, "footprint")
    pk = peaks(results)
    if not fp and not any(pk.values()):
        return
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    labels, idle, peak = [], [], []
    for comp in ("bridge", "worker"):
        for backend in ("embedded", "redis"):
            key = f"{comp}-{backend}"
            c = (fp or {}).get("components", {}).get(key)
            p = pk.get(key)
            if c is None and p is None:
                continue
            labels.append(f"{comp}\n{backend}")
            idle.append(c["idle_rss"] / MIB if c else 0)
            peak.append(p[0] / MIB if p else 0)
    x = range(len(labels))
    b1 = ax.bar([i - 0.2 for i in x], idle, width=0.4, label="idle (VmRSS)", color="#4c72b0")
    b2 = ax.bar([i + 0.2 for i in x], peak, width=0.4, label="peak under load (VmHWM)", color="#dd8452")
    for bars in (b1, b2):
        for b in bars:
            if b.get_height():
                ax.annotate(f"{b.get_height():.1f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=8)
    ax.axhline(20, color="#4c72b0", linestyle=":", label="target idle < 20 MiB")
    ax.axhline(60, color="#dd8452", linestyle=":", label="target under load < 60 MiB")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title("Memory of the bridge and the worker", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, "footprint.png", written)


def wait(results, written):
    sec = _ok(results, "wait")
    if not sec:
        return
    rows = sec["rows"]
    fig, ax = plt.subplots(figsize=(5.6, 4))
    names = [("direct", "Envoy -> app"), ("wait", "wait mode\n(filter, bridge, Redis, worker)")]
    for j, (pct, color) in enumerate((("p50", "#4c72b0"), ("p99", "#c44e52"))):
        vals = [rows[n][pct] for n, _ in names]
        bars = ax.bar([i + (j - 0.5) * 0.38 for i in range(len(names))], vals, width=0.38, color=color, label=pct)
        for b in bars:
            ax.annotate(f"{b.get_height():.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), [l for _, l in names], fontsize=8)
    ax.set_ylabel("latency, ms (median of runs)")
    ax.set_title("One client, one request at a time", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, "wait.png", written)


def filter_cost(results, written):
    sec = _ok(results, "filter")
    if not sec:
        return
    conns = sorted(sec["rows"], key=int)
    fig, axes = plt.subplots(1, len(conns), figsize=(5 * len(conns), 4), squeeze=False)
    for ax, c in zip(axes[0], conns):
        _bars(ax, sec["rows"][c], ("off", "every", "shipped"), FILTER_LABELS, f"GET /healthz, {c} connections")
        ax.set_ylabel("requests/s (median)")
    fig.suptitle("Filter cost on a passthrough route", fontsize=11)
    _save(fig, "filter-cost.png", written)


def draw(results):
    written = []
    for f in (ingress, submit, drain, wait, footprint, filter_cost):
        f(results, written)
    return written
