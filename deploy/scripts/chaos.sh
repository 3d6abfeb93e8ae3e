#!/usr/bin/env bash
# The chaos suite (tests/tests/chaos.rs), fully: hosts in network
# namespaces, link faults, partitions, overload, hostile clients, the
# control plane cut off, and a 30-minute soak. Writes the results table of
# docs/reliability.md (markdown) with the machine, date and command.
#
#   deploy/scripts/chaos.sh [full|bounded] [OUT.md]
#
# full (default): the documented durations (about 50 minutes on 2 cores).
# bounded: what CI runs (about 3 minutes). Needs root, iproute2, iptables.
# The binaries are copied first, so rebuilding meanwhile cannot change them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mode=${1:-full}
out=${2:-target/chaos/reliability-$mode.md}
case $mode in full|bounded) ;; *) echo "usage: $0 [full|bounded] [OUT.md]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "chaos.sh: needs root (network namespaces)" >&2; exit 1; }

cargo build --quiet -p tether-proxy -p tether-control -p tether-examples --bins
exe=$(cargo test --quiet -p tether-e2e --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "e2e" and .executable != null) | .executable' |
  tail -n 1)
[ -x "$exe" ] || { echo "chaos.sh: cannot find the e2e test binary" >&2; exit 1; }
run=$(mktemp -d /tmp/tether-chaos.XXXXXX)
bin=target/debug
for b in tether-proxy tether-control tether-sample tether-load; do cp "$bin/$b" "$run/"; done
cp "$exe" "$run/e2e"
mkdir -p "$(dirname "$out")"
rows=$run/rows.md
log=$run/chaos.log
started=$(date -u +"%Y-%m-%d %H:%M UTC")
commit="$(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
status=0
(
  cd tests
  TETHER_CHAOS=$([ "$mode" = full ] && echo full || echo bounded) \
  TETHER_CHAOS_REPORT=$rows \
  TETHER_PROXY_BIN=$run/tether-proxy \
  TETHER_CONTROL_BIN=$run/tether-control \
    "$run/e2e" chaos:: --test-threads=1 --nocapture
) >"$log" 2>&1 || status=$?
finished=$(date -u +"%Y-%m-%d %H:%M UTC")
{
  echo "Run: \`deploy/scripts/chaos.sh $mode\` ($([ "$mode" = full ] && echo 'TETHER_CHAOS=full' || echo 'bounded, as CI'))"
  echo "from $started to $finished, commit $commit;"
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); debug builds."
  echo "Link faults: $(grep -o 'link faults made with .*' "$log" | head -n 1 || echo 'n/a')."
  echo
  echo "| scenario | allowance | measured | result |"
  echo "|---|---|---|---|"
  cat "$rows" 2>/dev/null || true
  echo
  grep -E '^test result:' "$log" | tail -n 1 || true
} >"$out"
echo "chaos.sh: table in $out, log in $log (exit $status)" >&2
exit "$status"
