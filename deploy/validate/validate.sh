#!/usr/bin/env bash
# Schema validation of every manifest in istio/ and deploy/kubernetes/, with
# no cluster. Kubernetes built-in kinds: kubernetes-validate --strict against
# Kubernetes 1.33.0; Istio, KEDA and prometheus-operator kinds: the schemas
# of the pinned @kubernetes-models packages, strictly (unknown fields are
# errors); plus the OpenHQM filter's plugin configuration. Any document of a
# kind nothing here can validate is an error. Then deploy/observability/
# (observability.py): alert rules (promtool check rules + test rules), the
# Grafana dashboard (structure, every query parsed by promtool), metric and
# label names against docs/operations.md#metrics and the Rust sources, and
# deploy/kubernetes/openhqm-prometheusrule.yaml generated from the rules.
#
#   deploy/validate/validate.sh                 # every manifest, and deploy/observability/
#   deploy/validate/validate.sh FILE...         # only these manifests
#   deploy/validate/validate.sh --self-test     # every case in deploy/validate/broken/ (and its observability/) must be rejected
#   deploy/validate/validate.sh --all           # both of the above (what `make validate` runs)
#   deploy/validate/validate.sh --observability # only deploy/observability/ and its self-test
#   deploy/validate/validate.sh --install-only  # install the tools and stop
#
# First use installs, into target/tools/validate/ (or $OPENHQM_VALIDATE_TOOLS):
#   - a Python venv with requirements.txt (kubernetes-validate and its pinned deps), from PyPI;
#   - node_modules from package.json + package-lock.json (`npm ci`), from npm;
#   - promtool from Debian's prometheus package (ensure-promtool.sh; $PROMTOOL overrides).
# Later runs reuse them and need no network. They are reinstalled when
# requirements.txt, package-lock.json or the Python/Node version changes.
# Needs: bash, python3 (with venv), Node.js >= 20 and npm, sha256sum, and on
# first use apt-get + dpkg-deb (or $PROMTOOL).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${OPENHQM_VALIDATE_TOOLS:-$root/target/tools/validate}"
k8s_version="1.33.0"

mode=manifests
files=()
for arg in "$@"; do
  case "$arg" in
    --self-test) mode=self-test ;;
    --all) mode=all ;;
    --observability) mode=observability ;;
    --install-only) mode=install ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "validate.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) files+=("$arg") ;;
  esac
done

fail() { echo "validate.sh: $*" >&2; exit 2; }

command -v python3 >/dev/null || fail "python3 is needed (kubernetes-validate)"
command -v node >/dev/null || fail "Node.js >= 20 is needed (the Istio/KEDA/prometheus-operator schemas)"
command -v npm >/dev/null || fail "npm is needed to install the Istio/KEDA/prometheus-operator schema packages"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || fail "Node.js >= 20 is needed, found $(node --version)"

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

ensure_python() {
  local venv="$tools/venv"
  local want
  want="$(stamp_of "$here/requirements.txt")-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ -x "$venv/bin/kubernetes-validate" ] && [ "$(cat "$venv/.openhqm-stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  echo "validate.sh: installing kubernetes-validate into $venv (once)" >&2
  rm -rf "$venv"
  mkdir -p "$tools"
  python3 -m venv "$venv" || fail "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$here/requirements.txt" \
    || fail "pip install -r deploy/validate/requirements.txt failed"
  echo "$want" >"$venv/.openhqm-stamp"
}

ensure_node() {
  local dir="$tools/node"
  local want
  want="$(stamp_of "$here/package.json" "$here/package-lock.json")-node$node_major"
  if [ -d "$dir/node_modules" ] && [ "$(cat "$dir/.openhqm-stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  echo "validate.sh: installing the Istio/KEDA/prometheus-operator schema packages into $dir (once, npm ci)" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$here/package.json" "$here/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2) \
    || fail "npm ci failed (deploy/validate/package-lock.json)"
  echo "$want" >"$dir/.openhqm-stamp"
}

ensure_promtool() {
  promtool="$("$here/ensure-promtool.sh")" || fail "promtool is needed for deploy/observability/ (see ensure-promtool.sh)"
}

ensure_python
ensure_node
ensure_promtool
[ "$mode" = install ] && exit 0

run() {
  node "$here/validate-crds.mjs" \
    --modules "$tools/node" \
    --kubernetes-validate "$tools/venv/bin/kubernetes-validate" \
    --k8s-version "$k8s_version" \
    --root "$root" "$@"
}

manifests() {
  local list=("${files[@]}")
  if [ "${#list[@]}" -eq 0 ]; then
    mapfile -t list < <(cd "$root" && find istio deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) | LC_ALL=C sort)
    [ "${#list[@]}" -gt 0 ] || fail "no manifests found under istio/ or deploy/kubernetes/"
    list=("${list[@]/#/$root/}")
  fi
  run "${list[@]}"
}

self_test() {
  local list
  mapfile -t list < <(find "$here/broken" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) | LC_ALL=C sort)
  [ "${#list[@]}" -gt 0 ] || fail "no broken manifests in deploy/validate/broken/"
  run --self-test "${list[@]}"
}

# Alert rules, their tests, the dashboard and the metric names they use.
# (OPENHQM_PENDING_METRICS, for metrics still being added to the code, is
# read by observability.py from the caller's environment; never set here.)
observability() {
  "$tools/venv/bin/python" "$here/observability.py" --root "$root" check --promtool "$promtool"
}

observability_self_test() {
  "$tools/venv/bin/python" "$here/observability.py" --root "$root" self-test --promtool "$promtool"
}

status=0
case "$mode" in
  manifests)
    manifests || status=1
    [ "${#files[@]}" -gt 0 ] || observability || status=1
    ;;
  self-test)
    self_test || status=1
    observability_self_test || status=1
    ;;
  observability)
    observability || status=1
    observability_self_test || status=1
    ;;
  all)
    manifests || status=1
    self_test || status=1
    observability || status=1
    observability_self_test || status=1
    ;;
esac
exit "$status"
