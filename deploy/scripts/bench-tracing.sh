#!/usr/bin/env bash
# Tracing overhead (issue 5): one proxy hop with every request traced
# (sample_ratio 1.0, OTLP/gRPC to a real Jaeger) against the same hop with
# tracing off. Prints numbers.
#
# Two identical proxies on core 1, one with `mesh.tracing`; tether-load, the
# backend and Jaeger on core 0. Alternated A B A B, RUNS times: p50/p99 at
# RATE rps (open loop), and closed-loop throughput at 64 connections.
#
# Both proxies run one worker thread. Also CPU per 10k requests at RATE.
#
# Usage: deploy/scripts/bench-tracing.sh [RUNS=3] [SECONDS=15]   Env: RATE=1000 OUT=...
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
runs=${1:-3}; secs=${2:-15}; rate=${RATE:-1000}
bench_setup "${OUT:-bench-results/tracing}"

bench_start jaeger "$pin0" env JAEGER_OTLP_GRPC_PORT=14317 JAEGER_OTLP_HTTP_PORT=14318 JAEGER_QUERY_PORT=16687 deploy/scripts/run-jaeger.sh
jaeger_pid=$last_pid
backend=127.0.0.1:18090
bench_start backend "$pin0" "$bin/tether-sample" --name backend --listen $backend --body-size 1024
for v in off on; do
  tracing=""
  [ $v = on ] && tracing='mesh: { tracing: { otlp_endpoint: "http://127.0.0.1:14317", sample_ratio: 1.0 } }'
  printf '%s\nservices:\n  backend:\n    endpoints: [ { address: "%s" } ]\n    policy: { retries: { attempts: 0 } }\n' \
    "$tracing" "$backend" >"$work/$v.yaml"
done
bench_start proxy-off "$pin1" "$bin/tether-proxy" --worker-threads 1 --service bench --snapshot "$work/off.yaml" --admin 127.0.0.1:16050 --outbound 127.0.0.1:16051 --inbound 127.0.0.1:16052
off_pid=$last_pid
bench_start proxy-on "$pin1" "$bin/tether-proxy" --worker-threads 1 --service bench --snapshot "$work/on.yaml" --admin 127.0.0.1:16060 --outbound 127.0.0.1:16061 --inbound 127.0.0.1:16062
on_pid=$last_pid
"$bin/tether-proxy" wait-ready --admin 127.0.0.1:16050 --timeout 20s
"$bin/tether-proxy" wait-ready --admin 127.0.0.1:16060 --timeout 20s
for _ in $(seq 150); do curl -fsS -o /dev/null http://127.0.0.1:16687/api/services 2>/dev/null && break; sleep 0.2; done

load warm-off http://127.0.0.1:16051/ 500 3 16; load warm-on http://127.0.0.1:16061/ 500 3 16
rm -f "$out"/warm-*.json
for run in $(seq "$runs"); do
  for v in off on; do
    pid=$([ $v = off ] && echo "$off_pid" || echo "$on_pid")
    port=$([ $v = off ] && echo 16051 || echo 16061)
    before=$(cpu_ticks "$pid")
    load "$v-$run" "http://127.0.0.1:$port/" "$rate" "$secs" 16
    echo "$v $run $(( $(cpu_ticks "$pid") - before ))" >>"$out/cpu.txt"
  done
done
# Closed loop: also the proxy's CPU per request at saturation, and Jaeger's
# CPU (it shares core 0 with the load generator and backend, so what it
# spends ingesting spans lowers the traced side's max too).
for run in $(seq "$runs"); do
  for v in off on; do
    pid=$([ $v = off ] && echo "$off_pid" || echo "$on_pid")
    port=$([ $v = off ] && echo 16051 || echo 16061)
    before=$(cpu_ticks "$pid"); jaeger_before=$(cpu_ticks "$jaeger_pid")
    load "max-$v-$run" "http://127.0.0.1:$port/" 0 10 64
    echo "$v $run $(( $(cpu_ticks "$pid") - before )) $(( $(cpu_ticks "$jaeger_pid") - jaeger_before ))" >>"$out/max-cpu.txt"
  done
done
dropped=$(curl -fsS http://127.0.0.1:16060/metrics | awk '$1 == "tether_trace_spans_dropped_total" {print $2}')
failed=$(curl -fsS http://127.0.0.1:16060/metrics | awk '$1 == "tether_trace_export_errors_total" {print $2}')

python3 - "$out" "$dropped" "$failed" "$(getconf CLK_TCK)" <<'PY'
import json, os, statistics, sys
out, dropped, failed, tick = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def load(n):
    d = json.load(open(os.path.join(out, n + ".json")))
    return {x["Percentile"]: x["Value"] * 1e3 for x in d["DurationHistogram"]["Percentiles"]}, d["ActualQPS"], d["DurationHistogram"]["Count"]
runs = sorted({int(f.split("-")[1].split(".")[0]) for f in os.listdir(out) if f.startswith("off-")})
print("one proxy hop, tracing off vs on (sample_ratio 1.0, OTLP/gRPC to Jaeger), proxies on core 1")
for k in (50, 99):
    off = [load(f"off-{r}")[0][k] for r in runs]; on = [load(f"on-{r}")[0][k] for r in runs]
    d = [b - a for a, b in zip(off, on)]
    print(f"  p{k:<3} off {statistics.median(off):.3f} ms  on {statistics.median(on):.3f} ms  tracing adds {statistics.median(d):+.3f} ms [{min(d):+.3f}..{max(d):+.3f}]")
cpu = {}
for line in open(os.path.join(out, "cpu.txt")):
    v, r, t = line.split(); cpu.setdefault(v, []).append(int(t) / tick / load(f"{v}-{r}")[2] * 10000)
for v in ("off", "on"):
    print(f"  {v:3}: CPU s per 10k requests at the fixed rate: {statistics.median(cpu[v]):.3f} [{min(cpu[v]):.3f}..{max(cpu[v]):.3f}]")
mo = [load(f"max-off-{r}")[1] for r in runs]; mn = [load(f"max-on-{r}")[1] for r in runs]
loss = (1 - statistics.median(mn) / statistics.median(mo)) * 100
print(f"  max throughput at 64 connections: off {statistics.median(mo):.0f} rps, on {statistics.median(mn):.0f} rps: {loss:.1f} % loss (target <= 10 %)")
sat, jaeger = {}, {}
for line in open(os.path.join(out, "max-cpu.txt")):
    v, r, t, j = line.split(); n = load(f"max-{v}-{r}")[2]
    sat.setdefault(v, []).append(int(t) / tick / n * 10000); jaeger.setdefault(v, []).append(int(j) / tick / 10)
for v in ("off", "on"):
    print(f"  {v:3}: at max, proxy CPU s per 10k requests {statistics.median(sat[v]):.3f} [{min(sat[v]):.3f}..{max(sat[v]):.3f}], Jaeger on core 0 {statistics.median(jaeger[v]) * 100:.0f} % of a core")
cost = (1 - statistics.median(sat["off"]) / statistics.median(sat["on"])) * 100
print(f"  the proxy's own share: tracing raises its CPU per request at max by {statistics.median(sat['on']) / statistics.median(sat['off']) * 100 - 100:.0f} %, i.e. {cost:.0f} % fewer requests per proxy core")
print(f"  spans dropped (queue full): {dropped or 0}, export errors: {failed or 0}")
PY
