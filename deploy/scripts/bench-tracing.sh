#!/usr/bin/env bash
# Tracing overhead (issue 5): one proxy hop with every request traced
# (sample_ratio 1.0, OTLP/gRPC) against the same hop with tracing off.
# Prints numbers.
#
# Three identical proxies on core 1 (one worker thread each): `off` (no
# mesh.tracing), `sink` exporting to tether-otlp-sink (accepts and counts,
# decodes and keeps nothing) and `on` exporting to a real Jaeger.
# tether-load, the backend and the collector share core 0.
#
# Two phases, because on two cores a collector competes with the load
# generator: (A) off vs sink with Jaeger not running: what tracing costs the
# proxy; (B) off vs on with Jaeger running: what tracing costs this whole
# machine, collector included. In each phase the variants alternate, RUNS
# times: p50/p99 at RATE rps (open loop) and closed-loop throughput at 64
# connections, with the proxy's and the collector's CPU.
#
# Usage: deploy/scripts/bench-tracing.sh [RUNS=3] [SECONDS=15]   Env: RATE=1000 OUT=...
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
runs=${1:-3}; secs=${2:-15}; rate=${RATE:-1000}
bench_setup "${OUT:-bench-results/tracing}"

backend=127.0.0.1:18090
bench_start backend "$pin0" "$bin/tether-sample" --name backend --listen $backend --body-size 1024
bench_start sink "$pin0" "$bin/tether-otlp-sink" --listen 127.0.0.1:14417
sink_pid=$last_pid
declare -A proxy_pid port
port=([off]=16051 [on]=16061 [sink]=16071)
admin() { echo $(( port[$1] - 1 )); }
for v in off on sink; do
  case $v in
    off) tracing="" ;;
    on) tracing='mesh: { tracing: { otlp_endpoint: "http://127.0.0.1:14317", sample_ratio: 1.0 } }' ;;
    sink) tracing='mesh: { tracing: { otlp_endpoint: "http://127.0.0.1:14417", sample_ratio: 1.0 } }' ;;
  esac
  printf '%s\nservices:\n  backend:\n    endpoints: [ { address: "%s" } ]\n    policy: { retries: { attempts: 0 } }\n' \
    "$tracing" "$backend" >"$work/$v.yaml"
  bench_start "proxy-$v" "$pin1" "$bin/tether-proxy" --worker-threads 1 --service bench --snapshot "$work/$v.yaml" \
    --admin "127.0.0.1:$(admin $v)" --outbound "127.0.0.1:${port[$v]}" --inbound "127.0.0.1:$(( port[$v] + 1 ))"
  proxy_pid[$v]=$last_pid
done
for v in off on sink; do "$bin/tether-proxy" wait-ready --admin "127.0.0.1:$(admin $v)" --timeout 20s; done

# phase PREFIX COLLECTOR-PID VARIANT...: warm up, then RUNS rounds of the
# fixed-rate and the closed-loop load, variants alternating.
phase() {
  local prefix=$1 collector=$2 v run before collector_before; shift 2
  for v in "$@"; do load "warm-$v" "http://127.0.0.1:${port[$v]}/" 500 3 16; done
  rm -f "$out"/warm-*.json
  for run in $(seq "$runs"); do
    for v in "$@"; do
      before=$(cpu_ticks "${proxy_pid[$v]}")
      load "$prefix-$v-$run" "http://127.0.0.1:${port[$v]}/" "$rate" "$secs" 16
      echo "$prefix-$v $run $(( $(cpu_ticks "${proxy_pid[$v]}") - before ))" >>"$out/cpu.txt"
    done
  done
  for run in $(seq "$runs"); do
    for v in "$@"; do
      before=$(cpu_ticks "${proxy_pid[$v]}"); collector_before=$(cpu_ticks "$collector")
      load "$prefix-max-$v-$run" "http://127.0.0.1:${port[$v]}/" 0 10 64
      echo "$prefix-$v $run $(( $(cpu_ticks "${proxy_pid[$v]}") - before )) $(( $(cpu_ticks "$collector") - collector_before ))" >>"$out/max-cpu.txt"
    done
  done
}

phase a "$sink_pid" off sink
bench_start jaeger "$pin0" env JAEGER_OTLP_GRPC_PORT=14317 JAEGER_OTLP_HTTP_PORT=14318 JAEGER_QUERY_PORT=16687 deploy/scripts/run-jaeger.sh
jaeger_pid=$last_pid
for _ in $(seq 150); do curl -fsS -o /dev/null http://127.0.0.1:16687/api/services 2>/dev/null && break; sleep 0.2; done
phase b "$jaeger_pid" off on

counter() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
for v in sink on; do
  a=$(admin $v)
  echo "$v $(counter "$a" tether_trace_spans_exported_total) $(counter "$a" tether_trace_spans_dropped_total) $(counter "$a" tether_trace_export_errors_total)"
done >"$out/spans.txt"

python3 - "$out" "$(getconf CLK_TCK)" "$runs" <<'PY'
import json, os, statistics as st, sys
out, tick, runs = sys.argv[1], int(sys.argv[2]), range(1, int(sys.argv[3]) + 1)
def load(n):
    d = json.load(open(os.path.join(out, n + ".json")))
    return {x["Percentile"]: x["Value"] * 1e3 for x in d["DurationHistogram"]["Percentiles"]}, d["ActualQPS"], d["DurationHistogram"]["Count"]
def rng(xs, f="{:+.3f}"):
    return f"{f.format(st.median(xs))} [{f.format(min(xs))}..{f.format(max(xs))}]"
cpu, sat, coll = {}, {}, {}
for line in open(os.path.join(out, "cpu.txt")):
    k, r, t = line.split(); p, v = k.split("-")
    cpu.setdefault(k, []).append(int(t) / tick / load(f"{p}-{v}-{r}")[2] * 10000)
for line in open(os.path.join(out, "max-cpu.txt")):
    k, r, t, c = line.split(); p, v = k.split("-")
    sat.setdefault(k, []).append(int(t) / tick / load(f"{p}-max-{v}-{r}")[2] * 10000)
    coll.setdefault(k, []).append(int(c) / tick / 10 * 100)
spans = {l.split()[0]: (l.split() + ["0"] * 4)[1:4] for l in open(os.path.join(out, "spans.txt"))}
print(f"one proxy hop, tracing off vs on (sample_ratio 1.0, OTLP/gRPC), proxies on core 1; median of {len(runs)} [min..max]")
for p, v, title in (("a", "sink", "A. the proxy's cost: exporting to tether-otlp-sink (Jaeger not running)"),
                    ("b", "on", "B. the machine's cost: exporting to a real Jaeger on core 0")):
    print(title)
    for k in (50, 99):
        off = [load(f"{p}-off-{r}")[0][k] for r in runs]; on = [load(f"{p}-{v}-{r}")[0][k] for r in runs]
        print(f"  p{k:<3} at {os.environ.get('RATE', '1000')} rps: off {st.median(off):.3f} ms, traced {st.median(on):.3f} ms, adds {rng([b - a for a, b in zip(off, on)])} ms")
    a, b = cpu[f"{p}-off"], cpu[f"{p}-{v}"]
    print(f"  proxy CPU s per 10k requests at the fixed rate: off {st.median(a):.3f}, traced {st.median(b):.3f} ({st.median(b) / st.median(a) * 100 - 100:+.0f} %)")
    mo = [load(f"{p}-max-off-{r}")[1] for r in runs]; mt = [load(f"{p}-max-{v}-{r}")[1] for r in runs]
    loss = (1 - st.median(mt) / st.median(mo)) * 100
    print(f"  max throughput at 64 connections: off {st.median(mo):.0f} rps, traced {st.median(mt):.0f} rps: {loss:.1f} % loss (target <= 10 %)")
    a, b = sat[f"{p}-off"], sat[f"{p}-{v}"]
    print(f"  at max, proxy CPU s per 10k requests: off {rng(a, '{:.3f}')}, traced {rng(b, '{:.3f}')} ({st.median(b) / st.median(a) * 100 - 100:+.0f} %)")
    print(f"  collector CPU during the traced max runs: {st.median(coll[f'{p}-{v}']):.0f} % of a core (core 0, shared with the load generator and backend)")
    exported, dropped, failed = spans[v]
    print(f"  spans exported {exported}, dropped (queue full) {dropped}, export errors {failed}")
PY
