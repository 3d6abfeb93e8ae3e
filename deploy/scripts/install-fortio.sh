#!/usr/bin/env bash
# Builds fortio (load generator; -qps N sends at a fixed rate, latency
# histograms; see the latency caveat below) from its Go module into
# the cache and prints the binary's absolute path (the only thing on stdout).
#
#   deploy/scripts/install-fortio.sh           build once, then just print the path
#   deploy/scripts/install-fortio.sh --check   also smoke-test it: `fortio load`
#       at 100 qps for 2 s against a `fortio server` on 127.0.0.1:${FORTIO_CHECK_PORT:-18079}
#
# Pinned: fortio.org/fortio v1.68.2 -> $TETHER_CACHE/fortio-v1.68.2/bin/fortio
# It has no replace directives, so this is a plain `go install fortio.org/fortio@v1.68.2`.
# Why this version (checked 2026-11-23): every later release (v1.69.0 .. v1.75.3)
# requires grol.io/grol, and grol.io is not on the module-host allowlist of the
# Go module proxy reachable here.
#
# Build time here (2 cores, nice 10, 2026-11-23): 28 s with an empty Go build
# cache (modules already downloaded), 11 s with a warm one. Cached: ~0.05 s.
#
# Latency caveat for benchmarks: each of fortio's -c connections is a paced
# closed loop. It keeps the target rate by catching up after a slow response,
# but it times each request from when it was actually sent, not from when the
# schedule wanted it sent (periodic/periodic.go: latency = time.Since(fStart)).
# So its percentiles are NOT corrected for coordinated omission: a stall hides
# the queueing it caused. Check ActualQPS against -qps and use enough -c for
# the rate x expected latency, or use a truly open-loop generator.
#
# Usage in tests and benchmarks:
#   fortio server -http-port 127.0.0.1:PORT -grpc-port disabled -redirect-port disabled -tcp-port disabled -udp-port disabled
#   fortio load -qps 100 -t 2s -c 4 -json out.json http://127.0.0.1:PORT/
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib-install.sh"

fortio=$(go_build_module fortio fortio.org/fortio v1.68.2 . fortio -- version)

if [ "${1:-}" = --check ]; then
  log "fortio $("$fortio" version)"
  port=${FORTIO_CHECK_PORT:-18079}
  work=$(mktemp -d)
  pid=
  cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$work"; }
  trap cleanup EXIT; trap 'exit 143' INT TERM
  "$fortio" server -http-port "127.0.0.1:$port" -grpc-port disabled -redirect-port disabled -tcp-port disabled -udp-port disabled \
    >"$work/server.log" 2>&1 &
  pid=$!
  up=false
  for _ in $(seq 100); do  # 20 s at most
    curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/debug" 2>/dev/null && { up=true; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  $up || { tail -n 20 "$work/server.log" >&2; die "fortio server never answered on 127.0.0.1:$port"; }
  timeout 60 "$fortio" load -qps 100 -t 2s -json "$work/load.json" "http://127.0.0.1:$port/" >"$work/load.log" 2>&1 \
    || { tail -n 20 "$work/load.log" >&2; die "fortio load failed"; }
  summary=$(python3 - "$work/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["RetCodes"].get("200", 0)
p99 = next(p["Value"] for p in r["DurationHistogram"]["Percentiles"] if p["Percentile"] == 99)
print(f'{r["DurationHistogram"]["Count"]} requests, {ok} x 200, actual qps {r["ActualQPS"]:.1f}, p99 {p99*1e3:.2f} ms')
assert ok > 150, "too few 200s"
PY
) || die "unexpected fortio load result"
  log "check passed: $summary"
fi
echo "$fortio"
