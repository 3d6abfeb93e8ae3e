#!/usr/bin/env bash
# Keeps tether-load honest (issue #18): the same open-loop load from
# tether-load and from an outside tool, oha (crates.io, MIT; built once by
# `cargo install` into ~/.cache/tether/oha), back to back and alternating,
# against one target: a Tether sidecar hop in front of tether-sample.
# Both correct for coordinated omission (latency from the intended send
# time: tether-load's wrk2 model, oha's --latency-correction). Prints
# p50/p90/p99/p99.9 and the rate achieved per run.
#
#   deploy/scripts/bench/loadcheck.sh   Env: RATE=1000 SECS=10 RUNS=2 CONNS=16
set -euo pipefail
cd "$(dirname "$0")/../../.."
rate=${RATE:-1000}; secs=${SECS:-10}; runs=${RUNS:-2}; conns=${CONNS:-16}
oha=$HOME/.cache/tether/oha/bin/oha
[ -x "$oha" ] || cargo install oha --locked --root "$HOME/.cache/tether/oha" >/dev/null
cargo build --release --quiet -p tether-proxy -p tether-examples
bin=target/release
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM
"$bin/tether-sample" --name api --listen 127.0.0.1:19181 >"$work/sample.log" 2>&1 &
pids+=($!)
cat >"$work/snapshot.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "127.0.0.1:19181" } ]
YAML
"$bin/tether-proxy" --snapshot "$work/snapshot.yaml" --outbound 127.0.0.1:19101 --inbound 127.0.0.1:19102 \
  --admin 127.0.0.1:19103 --worker-threads 1 >"$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fsS -o /dev/null http://127.0.0.1:19103/ready 2>/dev/null && break; sleep 0.1; done
url=http://127.0.0.1:19101/
printf '%-12s %-4s %10s %9s %9s %9s %9s\n' tool run "rate/s" p50_ms p90_ms p99_ms p99.9_ms
for run in $(seq "$runs"); do
  "$bin/tether-load" --url "$url" --host api --rate "$rate" --connections "$conns" --duration "${secs}s" \
    --warmup 2s --out "$work/tl.json" >/dev/null
  python3 - "$work/tl.json" "$run" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("latency_ms") or r.get("latency") or {}
def g(*keys):
    for k in keys:
        if k in lat: return lat[k]
        if k in r: return r[k]
    return float("nan")
print(f"{'tether-load':<12} {sys.argv[2]:<4} {r['achieved_rps']:>10.0f} {lat['p50']:>9.3f} {lat['p90']:>9.3f} {lat['p99']:>9.3f} {lat['p99.9']:>9.3f}")
PY
  "$oha" --no-tui --output-format json -z "${secs}s" -q "$rate" -c "$conns" --latency-correction \
    -H "Host: api" "$url" >"$work/oha.json"
  python3 - "$work/oha.json" "$run" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]; s = r["summary"]
ms = lambda k: p[k] * 1000
print(f"{'oha':<12} {sys.argv[2]:<4} {s['requestsPerSec']:>10.0f} {ms('p50'):>9.3f} {ms('p90'):>9.3f} {ms('p99'):>9.3f} {ms('p99.9'):>9.3f}")
PY
done
