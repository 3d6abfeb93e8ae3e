#!/usr/bin/env bash
# Tracing overhead (issue 5): one proxy hop with every request traced
# (sample_ratio 1.0, OTLP/gRPC) against the same hop with tracing off.
# Prints numbers.
#
# Three identical proxies on core 1: `off` (no mesh.tracing), `on` exporting
# to a real Jaeger, and `sink` exporting to tether-otlp-sink, which accepts
# and counts without decoding. tether-load, the backend, Jaeger and the sink
# share core 0, so Jaeger's ingest CPU lowers the `on` maximum on this
# machine; `sink` shows what tracing costs the proxy itself. Alternated
# off on sink, RUNS times: p50/p99 at RATE rps (open loop), and closed-loop
# throughput at 64 connections.
#
# Every proxy runs one worker thread. Also CPU per 10k requests.
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
bench_start sink "$pin0" "$bin/tether-otlp-sink" --listen 127.0.0.1:14417
sink_pid=$last_pid
variants="off on sink"
for v in $variants; do
  tracing=""
  [ $v = on ] && tracing='mesh: { tracing: { otlp_endpoint: "http://127.0.0.1:14317", sample_ratio: 1.0 } }'
  [ $v = sink ] && tracing='mesh: { tracing: { otlp_endpoint: "http://127.0.0.1:14417", sample_ratio: 1.0 } }'
  printf '%s\nservices:\n  backend:\n    endpoints: [ { address: "%s" } ]\n    policy: { retries: { attempts: 0 } }\n' \
    "$tracing" "$backend" >"$work/$v.yaml"
done
bench_start proxy-off "$pin1" "$bin/tether-proxy" --worker-threads 1 --service bench --snapshot "$work/off.yaml" --admin 127.0.0.1:16050 --outbound 127.0.0.1:16051 --inbound 127.0.0.1:16052
off_pid=$last_pid
bench_start proxy-on "$pin1" "$bin/tether-proxy" --worker-threads 1 --service bench --snapshot "$work/on.yaml" --admin 127.0.0.1:16060 --outbound 127.0.0.1:16061 --inbound 127.0.0.1:16062
on_pid=$last_pid
bench_start proxy-sink "$pin1" "$bin/tether-proxy" --worker-threads 1 --service bench --snapshot "$work/sink.yaml" --admin 127.0.0.1:16070 --outbound 127.0.0.1:16071 --inbound 127.0.0.1:16072
sink_proxy_pid=$last_pid
for admin in 16050 16060 16070; do "$bin/tether-proxy" wait-ready --admin 127.0.0.1:$admin --timeout 20s; done
# pid and port of each variant's proxy
pid_of() { case $1 in off) echo "$off_pid";; on) echo "$on_pid";; sink) echo "$sink_proxy_pid";; esac; }
port_of() { case $1 in off) echo 16051;; on) echo 16061;; sink) echo 16071;; esac; }
collector_of() { case $1 in sink) echo "$sink_pid";; *) echo "$jaeger_pid";; esac; }
for _ in $(seq 150); do curl -fsS -o /dev/null http://127.0.0.1:16687/api/services 2>/dev/null && break; sleep 0.2; done

for v in $variants; do load "warm-$v" "http://127.0.0.1:$(port_of $v)/" 500 3 16; done
rm -f "$out"/warm-*.json
for run in $(seq "$runs"); do
  for v in $variants; do
    pid=$(pid_of $v); port=$(port_of $v)
    before=$(cpu_ticks "$pid")
    load "$v-$run" "http://127.0.0.1:$port/" "$rate" "$secs" 16
    echo "$v $run $(( $(cpu_ticks "$pid") - before ))" >>"$out/cpu.txt"
  done
done
# Closed loop: also the proxy's CPU per request at saturation, and the
# collector's CPU (it shares core 0 with the load generator and backend, so
# what it spends ingesting spans lowers the traced side's max too).
for run in $(seq "$runs"); do
  for v in $variants; do
    pid=$(pid_of $v); port=$(port_of $v); collector=$(collector_of $v)
    before=$(cpu_ticks "$pid"); collector_before=$(cpu_ticks "$collector")
    load "max-$v-$run" "http://127.0.0.1:$port/" 0 10 64
    echo "$v $run $(( $(cpu_ticks "$pid") - before )) $(( $(cpu_ticks "$collector") - collector_before ))" >>"$out/max-cpu.txt"
  done
done
counter() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
for admin in 16060 16070; do
  echo "$admin $(counter $admin tether_trace_spans_exported_total) $(counter $admin tether_trace_spans_dropped_total) $(counter $admin tether_trace_export_errors_total)"
done >"$out/spans.txt"

python3 - "$out" "$(getconf CLK_TCK)" <<'PY'
import json, os, statistics, sys
out, tick = sys.argv[1], int(sys.argv[2])
def load(n):
    d = json.load(open(os.path.join(out, n + ".json")))
    return {x["Percentile"]: x["Value"] * 1e3 for x in d["DurationHistogram"]["Percentiles"]}, d["ActualQPS"], d["DurationHistogram"]["Count"]
runs = sorted({int(f.split("-")[1].split(".")[0]) for f in os.listdir(out) if f.startswith("off-")})
print("one proxy hop, tracing off vs on (sample_ratio 1.0, OTLP/gRPC), proxies on core 1")
print("  on = exporting to Jaeger; sink = exporting to tether-otlp-sink (accepts, counts, keeps nothing)")
for k in (50, 99):
    off = [load(f"off-{r}")[0][k] for r in runs]
    line = f"  p{k:<3} off {statistics.median(off):.3f} ms"
    for v in ("on", "sink"):
        got = [load(f"{v}-{r}")[0][k] for r in runs]
        d = [b - a for a, b in zip(off, got)]
        line += f" | {v} {statistics.median(got):.3f} ms, adds {statistics.median(d):+.3f} [{min(d):+.3f}..{max(d):+.3f}]"
    print(line)
cpu = {}
for line in open(os.path.join(out, "cpu.txt")):
    v, r, t = line.split(); cpu.setdefault(v, []).append(int(t) / tick / load(f"{v}-{r}")[2] * 10000)
for v in ("off", "on", "sink"):
    print(f"  {v:4}: CPU s per 10k requests at the fixed rate: {statistics.median(cpu[v]):.3f} [{min(cpu[v]):.3f}..{max(cpu[v]):.3f}]")
mx = {v: [load(f"max-{v}-{r}")[1] for r in runs] for v in ("off", "on", "sink")}
for v in ("on", "sink"):
    loss = (1 - statistics.median(mx[v]) / statistics.median(mx["off"])) * 100
    print(f"  max throughput at 64 connections, {v:4}: off {statistics.median(mx['off']):.0f} rps, {v} {statistics.median(mx[v]):.0f} rps: {loss:.1f} % loss (target <= 10 %)")
sat, coll = {}, {}
for line in open(os.path.join(out, "max-cpu.txt")):
    v, r, t, j = line.split(); n = load(f"max-{v}-{r}")[2]
    sat.setdefault(v, []).append(int(t) / tick / n * 10000); coll.setdefault(v, []).append(int(j) / tick / 10)
names = {"off": "Jaeger (idle)", "on": "Jaeger", "sink": "sink"}
for v in ("off", "on", "sink"):
    print(f"  {v:4}: at max, proxy CPU s per 10k requests {statistics.median(sat[v]):.3f} [{min(sat[v]):.3f}..{max(sat[v]):.3f}], {names[v]} on core 0 {statistics.median(coll[v]) * 100:.0f} % of a core")
for v in ("on", "sink"):
    rise = statistics.median(sat[v]) / statistics.median(sat["off"]) * 100 - 100
    cost = (1 - statistics.median(sat["off"]) / statistics.median(sat[v])) * 100
    print(f"  the proxy's own share ({v}): tracing raises its CPU per request at max by {rise:.0f} %, i.e. {cost:.0f} % fewer requests per proxy core")
for line in open(os.path.join(out, "spans.txt")):
    admin, exported, dropped, failed = (line.split() + ["0"] * 4)[:4]
    v = "on" if admin == "16060" else "sink"
    print(f"  {v:4}: spans exported {exported}, dropped (queue full) {dropped}, export errors {failed}")
PY
