#!/usr/bin/env bash
# Checks a live Prometheus /metrics page of a bridge or worker:
#   1. `promtool check metrics` (exposition format and naming lint);
#   2. every openhqm_* family on it is in the metric table of
#      docs/operations.md#metrics, with that type and those labels;
#   3. each NAME given is on the page.
#
#   deploy/validate/check-metrics.sh URL [NAME...]
#   deploy/validate/check-metrics.sh http://127.0.0.1:9101/metrics openhqm_worker_active
#
# Exit 0 when all pass, 1 when a check fails, 2 when the page cannot be
# fetched or promtool cannot be had (see ensure-promtool.sh). Only a family
# with at least one sample is on a page: a labelled counter appears once it
# has counted something.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 1 ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
url="$1"
shift

promtool="$("$here/ensure-promtool.sh")"
page="$(mktemp)"
trap 'rm -f "$page"' EXIT
curl -fsS --max-time 10 -o "$page" "$url" || { echo "check-metrics.sh: cannot fetch $url" >&2; exit 2; }

status=0
if lint="$("$promtool" check metrics <"$page" 2>&1)"; then
  echo "ok    promtool check metrics: $url"
else
  echo "FAIL  promtool check metrics: $url"
  printf '%s\n' "$lint" | sed 's/^/  /'
  status=1
fi
require=()
for name in "$@"; do require+=(--require "$name"); done
python3 "$here/observability.py" live-metrics "$page" "${require[@]}" || status=1
exit "$status"
