#!/usr/bin/env bash
# Prints the path of a promtool, installing it on first use, without a
# Prometheus service: Debian's `prometheus` package is downloaded with
# `apt-get download` (no install, no postinst, no service) and only its
# usr/bin/promtool is kept, in target/tools/validate/prometheus/ (or
# $OPENHQM_VALIDATE_TOOLS/prometheus). Later runs reuse it, offline.
# $PROMTOOL, when set, is used instead (any promtool >= 2.42).
# Needs, on first use: apt-get and dpkg-deb (Debian/Ubuntu); root only if
# the package lists must be fetched first (apt-get update).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${OPENHQM_VALIDATE_TOOLS:-$root/target/tools/validate}"
dir="$tools/prometheus"

fail() { echo "ensure-promtool.sh: $*" >&2; exit 2; }

if [ -n "${PROMTOOL:-}" ]; then
  "$PROMTOOL" --version >/dev/null 2>&1 || fail "PROMTOOL=$PROMTOOL does not run"
  echo "$PROMTOOL"
  exit 0
fi
if [ -x "$dir/promtool" ] && "$dir/promtool" --version >/dev/null 2>&1; then
  echo "$dir/promtool"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || fail "promtool is needed: on Debian/Ubuntu this script fetches it with apt-get download; elsewhere set PROMTOOL=/path/to/promtool"
echo "ensure-promtool.sh: fetching promtool from Debian's prometheus package into $dir (once)" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt's download sandbox user must be able to write here
download() { (cd "$tmp" && apt-get download -q prometheus) >"$tmp/apt.log" 2>&1; }
if ! download; then
  # a fresh machine has no package lists yet
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; fail "apt-get update failed"; }
  fi
  download || { cat "$tmp/apt.log" >&2; fail "apt-get download prometheus failed (run apt-get update as root, or set PROMTOOL)"; }
fi
deb="$(ls "$tmp"/prometheus_*.deb)"
dpkg-deb -x "$deb" "$tmp/x"
[ -x "$tmp/x/usr/bin/promtool" ] || fail "$(basename "$deb") has no usr/bin/promtool"
mkdir -p "$dir"
cp "$tmp/x/usr/bin/promtool" "$dir/promtool.new"
mv "$dir/promtool.new" "$dir/promtool"
basename "$deb" >"$dir/FROM"
"$dir/promtool" --version >/dev/null 2>&1 || fail "the downloaded promtool does not run"
echo "$dir/promtool"
