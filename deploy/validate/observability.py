#!/usr/bin/env python3
"""Checks of the observability deliverables, run by validate.sh.

  observability.py check --promtool P [--root R]
      deploy/observability/: the alert rules (promtool check rules, promtool
      test rules, metadata and runbook anchors, a test that fires and one
      that stays silent for every alert), the Grafana dashboard (structure,
      every PromQL query parsed by promtool, PromQL lint), the generated
      PrometheusRule in deploy/kubernetes/ being current, and every openhqm_*
      metric and label they use existing (the metric table in
      docs/operations.md#metrics against the "openhqm_..." string literals in
      bridge/src, worker/src and core/src).
  observability.py self-test --promtool P [--root R]
      every case in deploy/validate/broken/observability/ must be rejected,
      for the reason its `# expect:` lines (NAME.expect for JSON) name.
  observability.py generate [--write]
      print (or write) deploy/kubernetes/openhqm-prometheusrule.yaml from
      deploy/observability/prometheus-rules.yaml.
  observability.py live-metrics FILE
      a scraped /metrics page (see check-metrics.sh): every openhqm_* family
      on it is documented, with the documented type and labels.

OPENHQM_PENDING_METRICS="name1 name2": accept these names as if they were in
the sources (for work on metrics another change is adding; never set it in
validate.sh). They still have to be documented.

`check` needs PyYAML (validate.sh runs it with its venv's Python, where
kubernetes-validate brings PyYAML); the other commands need only the
standard library.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

RULES = "deploy/observability/prometheus-rules.yaml"
RULE_TESTS = "deploy/observability/prometheus-rules.test.yaml"
# Recording rules that give the original OpenHQM's series from ours.
COMPAT_RULES = "deploy/observability/original-metrics-rules.yaml"
COMPAT_RULE_TESTS = "deploy/observability/original-metrics-rules.test.yaml"
COMPAT_PROMETHEUSRULE = "deploy/kubernetes/openhqm-original-metrics-prometheusrule.yaml"
MIGRATION_DOC = "docs/migration.md"
DASHBOARD = "deploy/observability/grafana-dashboard.json"
PROMETHEUSRULE = "deploy/kubernetes/openhqm-prometheusrule.yaml"
DOCS = "docs/operations.md"
SOURCE_DIRS = ("bridge/src", "worker/src", "core/src")
BROKEN = "deploy/validate/broken/observability"

# Labels Prometheus adds to every series, and histogram buckets' own.
TARGET_LABELS = {"job", "instance"}
SEVERITIES = {"critical", "warning", "info"}
# Grafana's built-in variables, and what stands in for them when a query is parsed.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
    "__dashboard": "openhqm",
}
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])(openhqm_[a-z0-9_]*[a-z0-9])(?![A-Za-z0-9_:])")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------ sources
def source_metric_names(root):
    """Every "openhqm_..." string literal in the Rust sources."""
    names = set()
    for d in SOURCE_DIRS:
        for dirpath, _, files in os.walk(os.path.join(root, d)):
            for f in files:
                if f.endswith(".rs"):
                    names.update(re.findall(r'"(openhqm_[a-z0-9_]+)"', read(os.path.join(dirpath, f))))
    return names


def pending_names():
    raw = os.environ.get("OPENHQM_PENDING_METRICS", "")
    return {n for n in re.split(r"[\s,]+", raw) if n}


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def doc_anchors(text):
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def documented_metrics(root):
    """{name: {"type", "labels", "line"}} from the table in docs/operations.md#metrics."""
    out = {}
    for i, line in enumerate(read(os.path.join(root, DOCS)).splitlines(), 1):
        if not line.startswith("| `openhqm_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4:
            continue
        name = cells[0].strip("`")
        labels = set(re.findall(r"`([a-z_]+)`", cells[2]))
        out[name] = {"type": cells[1], "labels": labels, "line": i}
    return out


def compat_recorded_names(root):
    """The series names the compatibility rule file records."""
    try:
        text = read(os.path.join(root, COMPAT_RULES))
    except OSError:
        return set()
    return set(re.findall(r"^\s*-?\s*record:\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*$", text, re.M))


class Catalog:
    """What the checks may refer to: documented metrics, and which exist."""

    def __init__(self, root):
        self.root = root
        self.docs = documented_metrics(root)
        self.sources = source_metric_names(root)
        self.pending = pending_names()
        # Names OpenHQM exports that the compatibility rules also record.
        self.shared = {n for n in compat_recorded_names(root) if self.base(n)[0] is not None}

    def base(self, name):
        """(documented base name, suffix) for a series name, or (None, None)."""
        if name in self.docs:
            return name, ""
        for suffix in ("_bucket", "_sum", "_count"):
            b = name[: -len(suffix)]
            if name.endswith(suffix) and self.docs.get(b, {}).get("type") == "histogram":
                return b, suffix
        return None, None

    def problems(self, name):
        """Why a series name may not be used, or None."""
        base, suffix = self.base(name)
        if base is None:
            for suffix in ("_bucket", "_sum", "_count"):
                b = name[: -len(suffix)]
                if name.endswith(suffix) and b in self.docs:
                    return f"{name}: {b} is a {self.docs[b]['type']}, not a histogram ({DOCS})"
            exists = name in self.sources or name in self.pending
            return f"{name}: not in the metric table of {DOCS}" + ("" if exists else " nor in the Rust sources (" + ", ".join(SOURCE_DIRS) + ")")
        if base not in self.sources and base not in self.pending:
            return f"{name}: no \"{base}\" in the Rust sources ({', '.join(SOURCE_DIRS)})"
        if suffix == "" and self.docs[base]["type"] == "histogram":
            return f"{name}: a histogram has no series of that name; use {name}_bucket, _sum or _count"
        return None

    def labels_of(self, name):
        base, suffix = self.base(name)
        if base is None:
            return None
        return self.docs[base]["labels"] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())


def catalog_errors(cat):
    errs = []
    for name in sorted(cat.sources - set(cat.docs)):
        errs.append(f"{DOCS}: {name} is in the Rust sources but not in the metric table")
    for name, d in sorted(cat.docs.items()):
        if d["type"] not in ("counter", "gauge", "histogram"):
            errs.append(f"{DOCS}:{d['line']}: {name}: type must be counter, gauge or histogram, not {d['type']!r}")
        if name not in cat.sources and name not in cat.pending:
            errs.append(f"{DOCS}:{d['line']}: {name} is documented but not in the Rust sources")
        if d["type"] == "counter" and not name.endswith("_total"):
            errs.append(f"{DOCS}:{d['line']}: {name}: a counter's name ends in _total")
    return errs


# --------------------------------------------------------------- PromQL lint
def selectors(expr):
    """(metric, {label: [(op, value), ...]}, start, end) for every openhqm_* selector.

    A label may be matched more than once (`{queue!="",queue=~"$queue"}`)."""
    out = []
    for m in METRIC_RE.finditer(expr):
        name, end = m.group(1), m.end()
        labels = {}
        rest = expr[end:]
        b = re.match(r"\s*\{([^}]*)\}", rest)
        if b:
            for lm in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', b.group(1)):
                labels.setdefault(lm.group(1), []).append((lm.group(2), lm.group(3)))
            end += b.end()
        out.append((name, labels, m.start(), end))
    return out


def grouping_labels(expr):
    labels = set()
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels.update(l.strip() for l in m.group(2).split(",") if l.strip())
    return labels


def call_args(expr, start):
    """The text between the parenthesis at or after `start` and its match."""
    i = expr.index("(", start)
    depth = 0
    for j in range(i, len(expr)):
        if expr[j] == "(":
            depth += 1
        elif expr[j] == ")":
            depth -= 1
            if depth == 0:
                return expr[i + 1 : j]
    return expr[i + 1 :]


def excludes_empty(op, value):
    """Whether a label matcher rejects series that lack the label."""
    if op == "=":
        return value != ""
    if op == "!=":
        return value == ""
    if op == "=~":
        try:
            return re.fullmatch(value, "") is None
        except re.error:
            return False
    return False


def lint_expr(expr, cat, extra_labels=(), copies=False):
    """Metric names, labels and counter/gauge/histogram use in one query.

    copies: a recording rule that copies series 1:1 (label_replace, sum
    without): counters and buckets may be used as instant values.
    """
    errs = []
    used = set()
    for name, matchers, start, end in selectors(expr):
        p = cat.problems(name)
        if p:
            errs.append(p)
            continue
        used.add(name)
        base, suffix = cat.base(name)
        known = cat.labels_of(name)
        for label in matchers:
            if label not in known and label != "__name__":
                errs.append(f"{name} has no label {label!r} (it has: {', '.join(sorted(known))})")
        kind = cat.docs[base]["type"]
        if name in cat.shared and not copies and not any(
            label in cat.docs[base]["labels"] and excludes_empty(op, v)
            for label, ms in matchers.items()
            for op, v in ms
        ):
            own = ", ".join(sorted(cat.docs[base]["labels"]))
            errs.append(
                f"{name}: the original's series are recorded under this name too ({COMPAT_RULES}); "
                f"select OpenHQM's own with a matcher on one of its labels that excludes the empty value ({own}), e.g. {{{own.split(', ')[0]}!=\"\"}}"
            )
        if copies:
            continue
        ranged = re.match(r"\s*\[", expr[end:]) is not None
        before = expr[:start].rstrip()
        fn = re.search(r"([a-z_]+)\s*\(\s*$", before)
        fn = fn.group(1) if fn else None
        if (kind == "counter" or suffix) and not ranged:
            errs.append(f"{name}: a counter is used through rate()/increase() over a range, not as an instant value")
        if kind == "counter" and fn not in ("rate", "irate", "increase", "resets"):
            errs.append(f"{name}: a counter needs rate(), irate() or increase(), not {fn or 'nothing'}()")
        if kind == "gauge" and fn in ("rate", "irate", "increase"):
            errs.append(f"{name}: {fn}() is for counters; this is a gauge (use deriv(), delta() or it as is)")
    for m in re.finditer(r"histogram_quantile\s*\(", expr):
        args = call_args(expr, m.start())
        agg = re.search(r"\b(by)\s*\(([^)]*)\)", args)
        if "_bucket" not in args:
            errs.append("histogram_quantile() over something other than a _bucket series")
        elif not agg or "le" not in [l.strip() for l in agg.group(2).split(",")]:
            errs.append("histogram_quantile() needs its buckets aggregated keeping le: sum by (le, ...) (rate(..._bucket[...]))")
        elif not re.search(r"\b(rate|increase)\s*\(", args):
            errs.append("histogram_quantile() over raw bucket counters; take rate() of the buckets first")
    if used:
        allowed = set().union(*(cat.labels_of(n) for n in used)) | set(extra_labels)
        for label in sorted(grouping_labels(expr) - allowed):
            errs.append(f"label {label!r} is used in by()/on()/... but none of {', '.join(sorted(used))} has it")
    return errs, used


# ----------------------------------------------------------------- promtool
def promtool_parse(promtool, exprs):
    """{key: error} for the (key, expr) pairs promtool cannot parse."""
    if not exprs:
        return {}
    rules = {"groups": [{"name": "parse", "rules": [{"record": f"parse:q{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.TemporaryDirectory(prefix="openhqm-obs-") as tmp:
        path = os.path.join(tmp, "queries.rules.json")
        with open(path, "w") as f:
            json.dump(rules, f)  # JSON is YAML: promtool reads it
        run = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    out = {}
    if run.returncode == 0:
        return out
    text = run.stdout + run.stderr
    for m in re.finditer(r'"parse:q(\d+)": (.*)', text):
        out[exprs[int(m.group(1))][0]] = m.group(2).strip()
    if not out:
        out["(promtool)"] = text.strip()[-400:]
    return out


def run_promtool(promtool, args, cwd=None):
    run = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd)
    return run.returncode, (run.stdout + run.stderr).strip()


# ---------------------------------------------------------------- dashboard
def all_panels(panels):
    for p in panels or []:
        yield p
        yield from all_panels(p.get("panels"))


def dashboard_errors(path, cat, promtool):
    """Errors of one dashboard file; (errors, metrics it uses)."""
    name = os.path.relpath(path, cat.root)
    try:
        d = json.loads(read(path))
    except (OSError, ValueError) as e:
        return [f"{name}: not valid JSON: {e}"], set()
    errs = []
    used = set()
    if not isinstance(d, dict):
        return [f"{name}: not a dashboard object"], used
    for key in ("title", "uid"):
        if not isinstance(d.get(key), str) or not d[key].strip():
            errs.append(f"{name}: {key} missing or empty")
    if isinstance(d.get("uid"), str) and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]):
        errs.append(f"{name}: uid {d['uid']!r}: at most 40 of A-Z a-z 0-9 _ -")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        errs.append(f"{name}: schemaVersion must be an integer >= 36 (Grafana 9+)")

    variables = (d.get("templating") or {}).get("list") or []
    vnames = [v.get("name") for v in variables]
    for v in set(vnames):
        if vnames.count(v) > 1:
            errs.append(f"{name}: variable {v!r} defined twice")
    ds_vars = {v["name"] for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"}
    if "datasource" not in ds_vars:
        errs.append(f"{name}: needs a variable named datasource of type datasource with query prometheus")

    def ds_ok(ds):
        if not isinstance(ds, dict) or ds.get("type") != "prometheus":
            return False
        m = re.fullmatch(r"\$\{?([A-Za-z0-9_]+)\}?", str(ds.get("uid", "")))
        return bool(m) and m.group(1) in ds_vars

    queries = []  # (where, expr)
    for v in variables:
        if v.get("type") != "query":
            continue
        where = f"{name}: variable {v.get('name')}"
        if not ds_ok(v.get("datasource")):
            errs.append(f"{where}: datasource must be {{type: prometheus, uid: ${{datasource}}}}, got {v.get('datasource')!r}")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q or "")
        if not m:
            errs.append(f"{where}: query must be label_values(<selector>, <label>), got {q!r}")
            continue
        queries.append((where, m.group(1), [m.group(2)]))
        ms = METRIC_RE.findall(m.group(1))
        if ms and cat.labels_of(ms[0]) is not None and m.group(2) not in cat.labels_of(ms[0]):
            errs.append(f"{where}: {ms[0]} has no label {m.group(2)!r}")

    panels = d.get("panels")
    if not isinstance(panels, list) or not panels:
        errs.append(f"{name}: no panels")
        panels = []
    ids = {}
    boxes = []
    for p in all_panels(panels):
        pid = p.get("id")
        where = f"{name}: panel {pid} {p.get('title')!r}"
        if not isinstance(pid, int):
            errs.append(f"{where}: id must be an integer")
        elif pid in ids:
            errs.append(f"{where}: id {pid} also used by {ids[pid]!r}")
        else:
            ids[pid] = p.get("title")
        if not p.get("title"):
            errs.append(f"{where}: no title")
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "hwxy"):
            errs.append(f"{where}: gridPos needs integer h, w, x, y")
        elif not (g["h"] >= 1 and 1 <= g["w"] <= 24 and 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["y"] >= 0):
            errs.append(f"{where}: gridPos {g} is off the 24-column grid")
        elif p in panels:
            for other, og in boxes:
                if g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]:
                    errs.append(f"{where}: overlaps panel {other}")
            boxes.append((pid, g))
        if p.get("type") == "row":
            continue
        if not ds_ok(p.get("datasource")):
            errs.append(f"{where}: datasource must be the variable: {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}}, got {p.get('datasource')!r}")
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            errs.append(f"{where}: no targets")
            continue
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            errs.append(f"{where}: refIds must be set and unique, got {refs}")
        for t in targets:
            tw = f"{where} target {t.get('refId')}"
            if "datasource" in t and not ds_ok(t["datasource"]):
                errs.append(f"{tw}: datasource must be the variable, got {t['datasource']!r}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errs.append(f"{tw}: no expr")
                continue
            legend = re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", t.get("legendFormat") or "")
            queries.append((tw, expr, legend))

    defined = set(vnames)
    parse = []
    for where, expr, legend in queries:
        def sub(m):
            var = m.group(1) or m.group(2) or m.group(3)
            if var in GRAFANA_BUILTINS:
                return GRAFANA_BUILTINS[var]
            if var not in defined:
                errs.append(f"{where}: ${var} is not a dashboard variable")
            return ".*"

        plain = re.sub(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]", sub, expr)
        problems, names = lint_expr(plain, cat)
        used |= names
        errs.extend(f"{where}: {e}" for e in problems)
        if names:
            allowed = set().union(*(cat.labels_of(n) for n in names))
            for label in legend:
                if label not in allowed:
                    errs.append(f"{where}: legend {{{{{label}}}}}: no such label on {', '.join(sorted(names))}")
        elif not METRIC_RE.search(plain):
            errs.append(f"{where}: uses no openhqm_* metric")
        parse.append((where, plain))
    for where, err in promtool_parse(promtool, parse).items():
        errs.append(f"{where}: PromQL: {err}")
    return errs, used


# -------------------------------------------------------------------- rules
def rules_errors(rules_path, tests_path, cat, promtool, docs_text, copies=False):
    """Errors of a rule file and (optionally) its tests; (errors, metrics used).

    copies: the file's recording rules copy series 1:1 (the compatibility
    rules), so counters may appear without rate().
    """
    try:
        import yaml  # PyYAML: validate.sh runs this with its venv's Python
    except ImportError:
        return ["PyYAML is needed to read the rule files: run this through deploy/validate/validate.sh (its venv has it)"], set()

    name = os.path.relpath(rules_path, cat.root)
    errs = []
    used = set()
    code, out = run_promtool(promtool, ["check", "rules", rules_path])
    if code != 0:
        errs.append(f"{name}: promtool check rules: {out}")
    try:
        doc = yaml.safe_load(read(rules_path))
        groups = doc["groups"]
        rules = [(g.get("name"), r) for g in groups for r in g.get("rules", [])]
    except Exception as e:  # any shape problem is reported, promtool says more
        return errs + [f"{name}: cannot read the rule groups: {e}"], used
    anchors = doc_anchors(docs_text)
    alerts = []
    for group, r in rules:
        what = r.get("alert") or r.get("record")
        where = f"{name}: {group}/{what}"
        problems, names = lint_expr(str(r.get("expr", "")), cat, copies=copies and "record" in r)
        used |= names
        errs.extend(f"{where}: {e}" for e in problems)
        if "alert" not in r:
            continue
        alerts.append(r["alert"])
        sev = (r.get("labels") or {}).get("severity")
        if sev not in SEVERITIES:
            errs.append(f"{where}: labels.severity must be one of {', '.join(sorted(SEVERITIES))}, got {sev!r}")
        ann = r.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not str(ann.get(key, "")).strip():
                errs.append(f"{where}: annotations.{key} missing")
        rb = str(ann.get("runbook_url", ""))
        m = re.fullmatch(r"docs/operations\.md#([a-z0-9_-]+)", rb)
        if rb and not m:
            errs.append(f"{where}: runbook_url must be docs/operations.md#<anchor>, got {rb!r}")
        elif m and m.group(1) not in anchors:
            errs.append(f"{where}: runbook_url anchor #{m.group(1)} is not a heading of {DOCS}")
    for a in sorted({a for a in alerts if alerts.count(a) > 1}):
        errs.append(f"{name}: alert {a} defined twice")

    if tests_path:
        tname = os.path.relpath(tests_path, cat.root)
        code, out = run_promtool(promtool, ["test", "rules", os.path.basename(tests_path)], cwd=os.path.dirname(tests_path))
        if code != 0:
            errs.append(f"{tname}: promtool test rules failed:\n{out}")
        try:
            tests = yaml.safe_load(read(tests_path)).get("tests") or []
        except Exception as e:
            return errs + [f"{tname}: cannot read: {e}"], used
        fires, silent = set(), set()
        for t in tests:
            problems = []
            for s in t.get("input_series") or []:
                for n in METRIC_RE.findall(str(s.get("series", ""))):
                    p = cat.problems(n)
                    if p and p not in problems:
                        problems.append(p)
            errs.extend(f"{tname}: test {t.get('name')!r}: {p}" for p in problems)
            for c in t.get("alert_rule_test") or []:
                (fires if c.get("exp_alerts") else silent).add(c.get("alertname"))
        for a in alerts:
            if a not in fires:
                errs.append(f"{tname}: no test shows {a} firing")
            if a not in silent:
                errs.append(f"{tname}: no test shows {a} staying silent")
    return errs, used


# ---------------------------------------------------------- PrometheusRule
PR_HEADER = """\
# GENERATED from deploy/observability/prometheus-rules.yaml by
# `python3 deploy/validate/observability.py generate --write`: edit that file,
# then regenerate; `make validate` fails while the two differ.
#
# The OpenHQM alert rules for the prometheus-operator (kube-prometheus-stack).
# Its Prometheus loads the PrometheusRules its ruleSelector matches: with
# kube-prometheus-stack that is usually the label release: <helm release>,
# so add that label (kubectl label, kustomize) if yours needs it.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: openhqm
  namespace: shop
  labels:
    app.kubernetes.io/name: openhqm
    app.kubernetes.io/component: alerts
spec:
"""


def prometheusrule_text(rules_text, header=PR_HEADER):
    """The rule file under spec:, its own leading comments left out."""
    lines = rules_text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() and not l.lstrip().startswith("#")), len(lines))
    body = "\n".join(("  " + l) if l.strip() else "" for l in lines[start:])
    return header + body.rstrip("\n") + "\n"


def prometheusrule_errors(root, rules_path, manifest_path):
    want = prometheusrule_text(read(rules_path))
    rel = os.path.relpath(manifest_path, root)
    try:
        have = read(manifest_path)
    except OSError:
        return [f"{rel}: missing; run: python3 deploy/validate/observability.py generate --write"]
    if have != want:
        return [f"{rel}: differs from what {os.path.relpath(rules_path, root)} generates; run: python3 deploy/validate/observability.py generate --write"]
    return []


COMPAT_PR_HEADER = PR_HEADER.replace(
    "deploy/observability/prometheus-rules.yaml", COMPAT_RULES
).replace(
    "# The OpenHQM alert rules for the prometheus-operator (kube-prometheus-stack).",
    "# The original OpenHQM's metric series, recorded from OpenHQM's, for the\n# prometheus-operator (kube-prometheus-stack); see docs/migration.md#metrics.",
).replace("  name: openhqm\n", "  name: openhqm-original-metrics\n").replace(
    "app.kubernetes.io/component: alerts", "app.kubernetes.io/component: recording-rules"
)


def compat_errors(root, cat, promtool):
    """The compatibility recording rules: promtool, tests, docs, manifest."""
    docs_text = read(os.path.join(root, DOCS))
    errs, _ = rules_errors(os.path.join(root, COMPAT_RULES), os.path.join(root, COMPAT_RULE_TESTS), cat, promtool, docs_text, copies=True)
    try:
        migration = read(os.path.join(root, MIGRATION_DOC))
    except OSError:
        migration = ""
    bases = set()
    for n in sorted(compat_recorded_names(root)):
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if base != n and base in bases:
            continue
        bases.add(base)
        if f"`{base}" not in migration:
            errs.append(f"{MIGRATION_DOC}: the recorded series {base} is not in the metrics mapping")
    text = read(os.path.join(root, COMPAT_RULES))
    want = prometheusrule_text(text, COMPAT_PR_HEADER)
    try:
        have = read(os.path.join(root, COMPAT_PROMETHEUSRULE))
    except OSError:
        have = None
    if have != want:
        errs.append(f"{COMPAT_PROMETHEUSRULE}: missing or differs from what {COMPAT_RULES} generates; run: python3 deploy/validate/observability.py generate --write")
    return errs


# -------------------------------------------------------------------- modes
def report(sections):
    """Print each section ok/FAIL; return the number failed."""
    failed = 0
    for title, errs in sections:
        if errs:
            failed += 1
            print(f"FAIL  {title}")
            for e in errs:
                for i, l in enumerate(e.splitlines()):
                    print(("  " if i == 0 else "    ") + l)
        else:
            print(f"ok    {title}")
    return failed


def cmd_check(args):
    root = args.root
    cat = Catalog(root)
    if cat.pending:
        print(f"observability: WARNING: OPENHQM_PENDING_METRICS accepts names not in the sources: {' '.join(sorted(cat.pending))}")
        for n in sorted(cat.pending & cat.sources):
            print(f"observability: note: {n} is in the sources now; drop it from OPENHQM_PENDING_METRICS")
    docs_text = read(os.path.join(root, DOCS))
    rule_errs, rule_used = rules_errors(os.path.join(root, RULES), os.path.join(root, RULE_TESTS), cat, args.promtool, docs_text)
    dash_errs, dash_used = dashboard_errors(os.path.join(root, DASHBOARD), cat, args.promtool)
    notes = sorted(set(cat.docs) - {cat.base(n)[0] for n in dash_used | rule_used})
    _, out = run_promtool(args.promtool, ["--version"])
    print(f"observability: {out.splitlines()[0] if out else 'promtool'}; {len(cat.sources)} metric names in the sources, {len(cat.docs)} documented")
    failed = report([
        (f"{DOCS}#metrics matches the metric names in the Rust sources", catalog_errors(cat)),
        (f"{RULES} (promtool check rules, metadata, runbook anchors, metrics and labels) + {RULE_TESTS} (promtool test rules)", rule_errs),
        (f"{DASHBOARD} (structure, PromQL parsed by promtool, metrics and labels)", dash_errs),
        (f"{PROMETHEUSRULE} is generated from {RULES}", prometheusrule_errors(root, os.path.join(root, RULES), os.path.join(root, PROMETHEUSRULE))),
        (f"{COMPAT_RULES} (the original's series: promtool check + test rules, {MIGRATION_DOC}, {COMPAT_PROMETHEUSRULE})", compat_errors(root, cat, args.promtool)),
    ])
    if notes:
        print(f"observability: note: documented but on neither the dashboard nor in an alert: {', '.join(notes)}")
    print(f"observability: {5 - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_self_test(args):
    root = args.root
    cat = Catalog(root)
    docs_text = read(os.path.join(root, DOCS))
    broken = os.path.join(root, BROKEN)
    cases = sorted(f for f in os.listdir(broken) if not f.endswith(".expect"))
    if not cases:
        print(f"observability self-test: no cases in {BROKEN}")
        return 1
    passed = failed = 0
    for f in cases:
        path = os.path.join(broken, f)
        rel = os.path.relpath(path, root)
        if f.endswith(".json"):
            expect_text = read(path + ".expect") if os.path.exists(path + ".expect") else ""
            errs, _ = dashboard_errors(path, cat, args.promtool)
        elif f.endswith(".test.yaml"):
            expect_text = read(path)
            errs, _ = rules_errors(os.path.join(root, RULES), path, cat, args.promtool, docs_text)
        elif f.startswith("prometheusrule-"):
            expect_text = read(path)
            errs = prometheusrule_errors(root, os.path.join(root, RULES), path)
        else:
            expect_text = read(path)
            errs, _ = rules_errors(path, None, cat, args.promtool, docs_text)
        expects = re.findall(r"^#\s*expect:\s*(.+?)\s*$", expect_text, re.M)
        missing = [x for x in expects if not any(x in e for e in errs)]
        if not expects:
            failed += 1
            print(f"FAIL  {rel}: has no \"# expect: <error text>\" line" + (" (in NAME.expect for JSON)" if f.endswith(".json") else ""))
        elif not errs:
            failed += 1
            print(f"FAIL  {rel}: was ACCEPTED, but it is broken (expected: {'; '.join(expects)})")
        elif missing:
            failed += 1
            print(f"FAIL  {rel}: rejected, but not for the expected reason (missing: {'; '.join(missing)})")
            for e in errs:
                print(f"  got: {e}")
        else:
            passed += 1
            print(f"ok    {rel}: rejected as expected")
            for e in errs:
                print("  " + e.splitlines()[0])
    print(f"observability self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_generate(args):
    outputs = [
        (PROMETHEUSRULE, prometheusrule_text(read(os.path.join(args.root, RULES)))),
        (COMPAT_PROMETHEUSRULE, prometheusrule_text(read(os.path.join(args.root, COMPAT_RULES)), COMPAT_PR_HEADER)),
    ]
    for path, text in outputs:
        if args.write:
            with open(os.path.join(args.root, path), "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {path}")
        else:
            sys.stdout.write(f"# --- {path}\n" + text)
    return 0


def parse_exposition(text):
    """{family: {"type", "labels": set of label-name tuples}} of a /metrics page."""
    fams = {}
    types = {}
    for line in text.splitlines():
        m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
        if m:
            types[m.group(1)] = m.group(2)
            fams.setdefault(m.group(1), {"type": m.group(2), "labels": set()})
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        series = m.group(1)
        fam = series
        for suffix in ("_bucket", "_sum", "_count"):
            if series.endswith(suffix) and types.get(series[: -len(suffix)]) == "histogram":
                fam = series[: -len(suffix)]
        labels = tuple(sorted(set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m.group(3) or "")) - {"le"}))
        fams.setdefault(fam, {"type": types.get(fam, "untyped"), "labels": set()})["labels"].add(labels)
    return fams


def cmd_live(args):
    cat = Catalog(args.root)
    fams = parse_exposition(read(args.file))
    errs = []
    seen = 0
    for fam, info in sorted(fams.items()):
        if not fam.startswith("openhqm_"):
            continue
        seen += 1
        doc = cat.docs.get(fam)
        if doc is None:
            errs.append(f"{fam}: on the page but not in the metric table of {DOCS}")
            continue
        if info["type"] != doc["type"]:
            errs.append(f"{fam}: a {info['type']} on the page, documented as a {doc['type']}")
        for labels in info["labels"]:
            if set(labels) != doc["labels"]:
                errs.append(f"{fam}: labels {{{', '.join(labels)}}} on the page, documented {{{', '.join(sorted(doc['labels']))}}}")
    for n in args.require:
        if n not in fams:
            errs.append(f"{n}: required but not on the page")
    for e in errs:
        print(f"FAIL  {e}")
    absent = sorted(set(cat.docs) - set(fams))
    print(f"live metrics: {seen} openhqm_* families on the page; documented but absent (not yet observed, or the other component's): {', '.join(absent) or 'none'}")
    print(f"live metrics: {seen - len({e.split(':')[0] for e in errs})} passed, {len({e.split(':')[0] for e in errs})} failed")
    return 1 if errs else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=ROOT)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for n in ("check", "self-test"):
        p = sub.add_parser(n)
        p.add_argument("--promtool", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--write", action="store_true")
    lv = sub.add_parser("live-metrics")
    lv.add_argument("file")
    lv.add_argument("--require", action="append", default=[], metavar="NAME")
    args = ap.parse_args()
    args.root = os.path.abspath(args.root)
    if getattr(args, "promtool", None):
        args.promtool = os.path.abspath(args.promtool)
    return {"check": cmd_check, "self-test": cmd_self_test, "generate": cmd_generate, "live-metrics": cmd_live}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
