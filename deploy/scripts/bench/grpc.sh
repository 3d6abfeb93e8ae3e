#!/usr/bin/env bash
# gRPC unary calls through two sidecars with mTLS against the same calls
# straight to the server (issue 13), with ghz (deploy/scripts/install-ghz.sh).
#
#   ghz → web sidecar (outbound, :authority api) ══ mTLS, HTTP/2 ══> api sidecar (inbound) → tether-grpc-echo
#   ghz → tether-grpc-echo                                                       (direct)
#
# Each run (RUNS times, direct and mesh alternating): RATE calls/s for
# SECONDS over 16 concurrent workers on one HTTP/2 connection, then the most
# ghz gets in SECONDS with 64 workers. Both sidecars one worker thread each,
# pinned to core 1; ghz and the echo server on core 0. The message is a
# 1-field protobuf (`{"text":"hello"}`, 7 bytes), echoed back.
#
# ghz times each call from when it was sent (a closed loop per worker), so
# its percentiles are not corrected for coordinated omission: compare its
# achieved rate with RATE.
#
# Usage: deploy/scripts/bench/grpc.sh [RUNS=3] [SECONDS=10]   Env: RATE=1000 OUT=bench-results/grpc
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ghz=$("$here/../install-ghz.sh")
source "$here/../bench-lib.sh"
runs=${1:-3}; secs=${2:-10}; rate=${RATE:-1000}
bench_setup "${OUT:-bench-results/grpc}"

"$bin/tether-pki" init --dir "$work/pki" >/dev/null
for svc in web api; do "$bin/tether-pki" issue --dir "$work/pki" --service $svc --out "$work/pki/$svc" >/dev/null; done
cat >"$work/echo.proto" <<'PROTO'
syntax = "proto3";
package bench;
message Msg { string text = 1; }
service Echo { rpc Unary(Msg) returns (Msg); }
PROTO

echo_addr=127.0.0.1:16150
bench_start echo "$pin0" "$bin/tether-grpc-echo" --listen $echo_addr
cat >"$work/web.yaml" <<YAML
services:
  api:
    protocol: grpc
    endpoints: [ { address: "127.0.0.1:16153" } ]
    policy: { retries: { attempts: 0 } }
YAML
printf 'services: {}\n' >"$work/api.yaml"
bench_start api "$pin1" "$bin/tether-proxy" --worker-threads 1 --service api --snapshot "$work/api.yaml" \
  --admin 127.0.0.1:16152 --outbound 127.0.0.1:16154 --inbound 127.0.0.1:16153 \
  --app $echo_addr --app-protocol grpc --identity-dir "$work/pki/api" --trust-bundle "$work/pki/ca.pem"
bench_start web "$pin1" "$bin/tether-proxy" --worker-threads 1 --service web --snapshot "$work/web.yaml" \
  --admin 127.0.0.1:16151 --outbound 127.0.0.1:16155 --inbound 127.0.0.1:16156 \
  --identity-dir "$work/pki/web" --trust-bundle "$work/pki/ca.pem"
"$bin/tether-proxy" wait-ready --admin 127.0.0.1:16151 --timeout 20s
"$bin/tether-proxy" wait-ready --admin 127.0.0.1:16152 --timeout 20s

# call NAME TARGET RPS(0: as fast as it goes) CONCURRENCY SECONDS
call() {
  local name=$1 target=$2 rps=$3 c=$4 s=$5 rate_args=()
  [ "$rps" -gt 0 ] && rate_args=(--rps "$rps")
  $pin0 "$ghz" --insecure --proto "$work/echo.proto" --call bench.Echo/Unary -d '{"text":"hello"}' \
    --authority api -c "$c" --connections 1 -z "${s}s" "${rate_args[@]}" -O json -o "$out/$name.json" "$target" \
    >/dev/null 2>"$work/ghz.err" || { cat "$work/ghz.err" >&2; exit 1; }
}
direct=$echo_addr; mesh=127.0.0.1:16155
call warm-direct $direct 500 16 2; call warm-mesh $mesh 500 16 2
rm -f "$out"/warm-*.json
for run in $(seq "$runs"); do
  call "rate-direct-$run" $direct "$rate" 16 "$secs"
  call "rate-mesh-$run" $mesh "$rate" 16 "$secs"
done
for run in $(seq "$runs"); do
  call "max-direct-$run" $direct 0 64 "$secs"
  call "max-mesh-$run" $mesh 0 64 "$secs"
done
ok=$(curl -fsS http://127.0.0.1:16151/metrics | awk '$1 ~ /^tether_grpc_responses_total\{direction="outbound",grpc_status="ok",service="api"\}/ {print $2}')

python3 - "$out" "$runs" "$rate" "${ok:-0}" <<'PY'
import json, os, statistics, sys
out, runs, rate, ok = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def load(n):
    d = json.load(open(os.path.join(out, n + ".json")))
    p = {x["percentage"]: x["latency"] / 1e6 for x in d.get("latencyDistribution") or []}
    good = (d.get("statusCodeDistribution") or {}).get("OK", 0)
    return p, d["rps"], d["count"], d["count"] - good
med = statistics.median
print(f"gRPC unary, ghz, {runs} runs each (medians [min..max]); sidecars 1 worker thread each on core 1, ghz + echo server on core 0")
for v in ("direct", "mesh"):
    rs = [load(f"rate-{v}-{r}") for r in range(1, runs + 1)]
    cells = []
    for k in (50, 90, 99):
        xs = [p[k] for p, _, _, _ in rs]
        cells.append(f"p{k} {med(xs):.3f} ms [{min(xs):.3f}..{max(xs):.3f}]")
    got = med([x[1] for x in rs]); errs = sum(x[3] for x in rs)
    print(f"  {rate} rps {v:6}: " + "  ".join(cells) + f"  achieved {got:.0f}/s  non-OK {errs}")
for v in ("direct", "mesh"):
    ms = [load(f"max-{v}-{r}") for r in range(1, runs + 1)]
    print(f"  max, 64 workers, {v:6}: {med([x[1] for x in ms]):.0f} calls/s [{min(x[1] for x in ms):.0f}..{max(x[1] for x in ms):.0f}]  p50 {med([x[0][50] for x in ms]):.3f} ms  p99 {med([x[0][99] for x in ms]):.3f} ms  non-OK {sum(x[3] for x in ms)}")
print(f"  web sidecar counted {ok:.0f} calls as grpc_status=\"ok\"")
PY
