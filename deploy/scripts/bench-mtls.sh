#!/usr/bin/env bash
# Two-sidecar hop with mTLS against plaintext (issue 4). Prints numbers.
#
#   tether-load → web sidecar (outbound) ══ plaintext | mTLS ══> api sidecar (inbound) → backend
#
# Both variants run side by side (A B A B, RUNS times) at RATE rps, open
# loop; both sidecars on core 1, tether-load and the backend on core 0. Also:
# full TLS 1.3 handshakes per second against one sidecar on one core
# (openssl s_time, ECDSA P-256, client certificate), and how many
# connections the pooled path opened compared with requests sent.
#
# Usage: deploy/scripts/bench-mtls.sh [RUNS=3] [SECONDS=15]   Env: RATE=1000 OUT=...
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
runs=${1:-3}; secs=${2:-15}; rate=${RATE:-1000}
bench_setup "${OUT:-bench-results/mtls}"
bench_host=api  # the sidecar behind the hop proves it is `api`

"$bin/tether-pki" init --dir "$work/pki" >/dev/null
for svc in web api; do "$bin/tether-pki" issue --dir "$work/pki" --service $svc --out "$work/pki/$svc" >/dev/null; done
backend=127.0.0.1:18090
bench_start backend "$pin0" "$bin/tether-sample" --name backend --listen $backend --body-size 1024

# One pair of sidecars per variant: plain on 1603x, mTLS on 1604x.
pair() { # variant port-base tls-args...
  local v=$1 base=$2; shift 2
  cat >"$work/web-$v.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "127.0.0.1:$((base + 3))" } ]
    policy: { retries: { attempts: 0 } }
YAML
  printf 'services: {}\n' >"$work/api-$v.yaml"
  bench_start "api-$v" "$pin1" "$bin/tether-proxy" --worker-threads 1 --service api --snapshot "$work/api-$v.yaml" \
    --admin 127.0.0.1:$((base + 2)) --outbound 127.0.0.1:$((base + 4)) --inbound 127.0.0.1:$((base + 3)) --app $backend "$@"
  eval "api_pid_$v=$last_pid"
  bench_start "web-$v" "$pin1" "$bin/tether-proxy" --worker-threads 1 --service web --snapshot "$work/web-$v.yaml" \
    --admin 127.0.0.1:$((base + 0)) --outbound 127.0.0.1:$((base + 1)) --inbound 127.0.0.1:$((base + 5)) "${web_tls[@]}"
  eval "web_pid_$v=$last_pid"
  "$bin/tether-proxy" wait-ready --admin 127.0.0.1:$((base + 0)) --timeout 20s
  "$bin/tether-proxy" wait-ready --admin 127.0.0.1:$((base + 2)) --timeout 20s
}
web_tls=(); pair plain 16030
web_tls=(--identity-dir "$work/pki/web" --trust-bundle "$work/pki/ca.pem")
pair mtls 16040 --identity-dir "$work/pki/api" --trust-bundle "$work/pki/ca.pem"

load warm-plain http://127.0.0.1:16031/ 500 3 16; load warm-mtls http://127.0.0.1:16041/ 500 3 16
rm -f "$out"/warm-*.json
for run in $(seq "$runs"); do
  for v in plain mtls; do
    port=$([ $v = plain ] && echo 16031 || echo 16041)
    eval "w=\$web_pid_$v; a=\$api_pid_$v"
    before=$(( $(cpu_ticks "$w") + $(cpu_ticks "$a") ))
    load "$v-$run" "http://127.0.0.1:$port/" "$rate" "$secs" 16
    after=$(( $(cpu_ticks "$w") + $(cpu_ticks "$a") ))
    echo "$v $run $((after - before))" >>"$out/cpu.txt"
  done
done
for run in $(seq "$runs"); do
  load "max-plain-$run" http://127.0.0.1:16031/ 0 10 64
  load "max-mtls-$run" http://127.0.0.1:16041/ 0 10 64
done
accepted=$(curl -fsS http://127.0.0.1:16042/metrics | awk '$1 ~ /^tether_connections_total\{direction="inbound"\}/ {print $2}')
served=$(curl -fsS http://127.0.0.1:16042/metrics | awk '$1 ~ /^tether_requests_total\{direction="inbound",service="api",status_class="2xx"\}/ {print $2}')
# Full handshakes (no resumption: Tether turns it off) against api's sidecar on core 1.
hs=$($pin0 openssl s_time -connect 127.0.0.1:16043 -new -time 10 -tls1_3 \
  -cert "$work/pki/web/identity.pem" -key "$work/pki/web/identity-key.pem" -CAfile "$work/pki/ca.pem" 2>/dev/null \
  | awk '/connections in [0-9.]+s/ {print $1 / $4}' | sed -n 1p)

python3 - "$out" "$(getconf CLK_TCK)" "$accepted" "$served" "${hs:-0}" <<'PY'
import json, os, statistics, sys
out, tick, accepted, served, hs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def load(n):
    d = json.load(open(os.path.join(out, n + ".json")))
    p = {x["Percentile"]: x["Value"] * 1e3 for x in d["DurationHistogram"]["Percentiles"]}
    return p, d["ActualQPS"], d["DurationHistogram"]["Count"], d["RetCodes"].get("200", 0)
runs = sorted({int(f.split("-")[1].split(".")[0]) for f in os.listdir(out) if f.startswith("plain-")})
print("two-sidecar hop, plaintext vs mTLS (TLS 1.3, ECDSA P-256), both sidecars pinned to core 1")
for k in (50, 90, 99, 99.9):
    pl = [load(f"plain-{r}")[0][k] for r in runs]; mt = [load(f"mtls-{r}")[0][k] for r in runs]
    diff = [b - a for a, b in zip(pl, mt)]
    print(f"  p{k:<5} plain {statistics.median(pl):7.3f} ms  mTLS {statistics.median(mt):7.3f} ms  mTLS adds {statistics.median(diff):+.3f} ms [{min(diff):+.3f}..{max(diff):+.3f}]")
cpu = {}
for line in open(os.path.join(out, "cpu.txt")):
    v, r, t = line.split(); cpu.setdefault(v, []).append(int(t) / tick / load(f"{v}-{r}")[2] * 10000)
for v in ("plain", "mtls"):
    errors = sum(load(f"{v}-{r}")[2] - load(f"{v}-{r}")[3] for r in runs)
    print(f"  {v:5}: CPU s per 10k requests, both sidecars: {statistics.median(cpu[v]):.3f} [{min(cpu[v]):.3f}..{max(cpu[v]):.3f}]  non-200: {errors}")
mp = [load(f"max-plain-{r}")[1] for r in runs]; mm = [load(f"max-mtls-{r}")[1] for r in runs]
print(f"  max throughput at 64 connections: plain {statistics.median(mp):.0f} rps, mTLS {statistics.median(mm):.0f} rps ({statistics.median(mm)/statistics.median(mp)*100:.0f} %)")
print(f"  pooling: api sidecar accepted {accepted:.0f} mTLS connections for {served:.0f} requests")
print(f"  full TLS 1.3 handshakes with client auth, one sidecar on one core: {hs:.0f} per second (openssl s_time -new, 10 s)")
PY
