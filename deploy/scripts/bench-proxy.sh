#!/usr/bin/env bash
# One-hop proxy benchmark (issue 2). Prints numbers; asserts nothing.
#
# Method (shared/BENCH.md): open-loop load at fixed rates with tether-load
# (-qps, latency measured from each request's scheduled send time), direct
# and through one tether-proxy hop, alternated A B A B, RUNS times each;
# median and spread reported. Backend and load generator pinned to core 0,
# the proxy to core 1 (its tokio runtime then runs one worker thread).
# 1 KiB answers, HTTP/1.1 keep-alive, CONNS connections.
#
# Usage: deploy/scripts/bench-proxy.sh [RUNS=3] [SECONDS=15]
# Env:   RATES="1000 5000"  CONNS=16  OUT=bench-results/proxy
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
runs=${1:-3}
secs=${2:-15}
rates=${RATES:-"1000 5000"}
conns=${CONNS:-16}
bench_setup "${OUT:-bench-results/proxy}"

backend=127.0.0.1:18090
bench_start backend "$pin0" "$bin/tether-sample" --name backend --listen $backend --body-size 1024
cat >"$work/snapshot.yaml" <<YAML
services:
  backend:
    endpoints: [ { address: "$backend" } ]
    # Long timeouts: the 1 GiB upload is answered only after its last byte.
    policy: { timeout: 120s, retries: { attempts: 0, per_try_timeout: 120s } }
YAML
bench_start proxy "$pin1" "$bin/tether-proxy" --worker-threads 1 --snapshot "$work/snapshot.yaml" --admin 127.0.0.1:15900 \
  --outbound 127.0.0.1:15901 --inbound 127.0.0.1:15902 --app $backend
proxy_pid=$last_pid
"$bin/tether-proxy" wait-ready --admin 127.0.0.1:15900 --timeout 20s
tick=$(getconf CLK_TCK)
idle_rss=$(rss_kib $proxy_pid VmRSS)

# Warm-up (connections, allocator, page cache), not recorded.
load warm-direct "http://$backend/" 500 3 "$conns"; load warm-proxy "http://127.0.0.1:15901/" 500 3 "$conns"
rm -f "$out"/warm-*.json

cpu_total=0; req_total=0
for rate in $rates; do
  for run in $(seq "$runs"); do
    load "direct-$rate-$run" "http://$backend/" "$rate" "$secs" "$conns"
    before=$(cpu_ticks $proxy_pid)
    load "proxy-$rate-$run" "http://127.0.0.1:15901/" "$rate" "$secs" "$conns"
    after=$(cpu_ticks $proxy_pid)
    echo "$rate $run $((after - before))" >>"$out/cpu.txt"
  done
done
# Closed loop at 64 connections: max throughput (not a latency number).
for run in $(seq "$runs"); do
  load "max-direct-$run" "http://$backend/" 0 10 64
  load "max-proxy-$run" "http://127.0.0.1:15901/" 0 10 64
done
loaded_hwm=$(rss_kib $proxy_pid VmHWM)

# 1 GiB each way through the proxy; the proxy's peak RSS must not follow.
gib=$((1024 * 1024 * 1024))
curl -fsS -o /dev/null -H "Host: backend" "http://127.0.0.1:15901/bytes/$gib"
head -c "$gib" /dev/zero | curl -fsS -o "$work/sunk" -H "Host: backend" -H "Expect:" -X POST -T - \
  "http://127.0.0.1:15901/sink"
stream_hwm=$(rss_kib $proxy_pid VmHWM)

python3 - "$out" "$tick" "$idle_rss" "$loaded_hwm" "$stream_hwm" "$(cat "$work/sunk")" <<'PY'
import json, os, statistics, sys
out, tick, idle, hwm, stream_hwm, sunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6].strip()
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        d = json.load(f)
    p = {x["Percentile"]: x["Value"] * 1e3 for x in d["DurationHistogram"]["Percentiles"]}
    ok = d["RetCodes"].get("200", 0)
    return {"p50": p[50], "p90": p[90], "p99": p[99], "p999": p[99.9], "qps": d["ActualQPS"], "count": d["DurationHistogram"]["Count"], "ok": ok}
def med(xs):
    return statistics.median(xs), (min(xs), max(xs))
names = sorted(f[:-5] for f in os.listdir(out) if f.endswith(".json"))
rates = sorted({int(n.split("-")[1]) for n in names if n.startswith("direct-")})
cpu = {}
with open(os.path.join(out, "cpu.txt")) as f:
    for line in f:
        r, run, t = line.split(); cpu.setdefault(int(r), []).append((int(run), int(t)))
print("machine:", os.popen("nproc").read().strip(), "cores,", os.popen("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").read().strip())
print("pinning: backend + tether-load on core 0, tether-proxy on core 1 (--worker-threads 1)")
print()
print("Added latency of one tether-proxy hop (proxy minus direct, ms; median of runs [min..max])")
print(f"{'rate':>6} {'pct':>6} {'direct':>8} {'proxy':>8} {'added':>22}")
results = {}
for rate in rates:
    runs = sorted({int(n.split("-")[2]) for n in names if n.startswith(f"direct-{rate}-")})
    d = [load(f"direct-{rate}-{r}") for r in runs]; p = [load(f"proxy-{rate}-{r}") for r in runs]
    for k in ("p50", "p90", "p99", "p999"):
        added = [b[k] - a[k] for a, b in zip(d, p)]
        m, (lo, hi) = med(added)
        print(f"{rate:>6} {k:>6} {statistics.median(x[k] for x in d):8.3f} {statistics.median(x[k] for x in p):8.3f} {m:8.3f} [{lo:.3f}..{hi:.3f}]")
        results[f"{rate}-{k}"] = m
    errors = sum(x["count"] - x["ok"] for x in p)
    ticks = [t for _, t in cpu[rate]]
    reqs = [x["count"] for x in p]
    per10k = [t / tick / n * 10000 for t, n in zip(ticks, reqs)]
    print(f"{rate:>6} {'cpu':>6}  proxy CPU s per 10k requests: {statistics.median(per10k):.3f} [{min(per10k):.3f}..{max(per10k):.3f}]  non-200: {errors}")
print()
maxd = [load(f"max-direct-{r}")["qps"] for r in range(1, len(rates) and 1 + len([n for n in names if n.startswith("max-direct-")]))]
maxp = [load(f"max-proxy-{r}")["qps"] for r in range(1, 1 + len(maxd))]
print(f"max throughput, 64 connections, closed loop: direct {statistics.median(maxd):.0f} rps, proxy {statistics.median(maxp):.0f} rps (median of {len(maxp)}; proxy runs {min(maxp):.0f}..{max(maxp):.0f})")
print(f"proxy RSS: idle {idle/1024:.1f} MiB, peak under load {hwm/1024:.1f} MiB, peak after 1 GiB down + 1 GiB up {stream_hwm/1024:.1f} MiB (sink received {sunk} bytes)")
PY
