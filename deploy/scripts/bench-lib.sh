# Shared pieces of the benchmark scripts (sourced, not run).
# Method: shared/BENCH.md. Load generator (tether-load) and backend on core 0,
# proxies on core 1 (when the machine has two cores or more).

bench_setup() { # OUT-DIR
  cd "$(dirname "${BASH_SOURCE[0]}")/../.."
  out=$1
  mkdir -p "$out"
  rm -f "$out"/*.json "$out"/*.txt
  cargo build --release --quiet -p tether-proxy -p tether-examples
  bin=target/release
  pin0="taskset -c 0"; pin1="taskset -c 1"
  [ "$(nproc)" -ge 2 ] || { pin0=""; pin1=""; }
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# bench_start NAME PIN CMD...: runs CMD in the background, logs to $work/NAME.log.
bench_start() {
  local name=$1 pin=$2; shift 2
  $pin "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  last_pid=$!
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# load NAME URL QPS SECONDS CONNS: tether-load (examples/src/load.rs) at a
# fixed rate, open loop, latency from each request's intended send time
# (corrected for coordinated omission; fortio's is not), or closed loop for
# QPS 0. Writes $out/NAME.json with the fields the scripts' reports read:
# DurationHistogram.Percentiles (seconds), DurationHistogram.Count,
# ActualQPS and RetCodes["200"] (requests without error).
load() {
  local raw="$out/$1.raw.json"
  $pin0 "$bin/tether-load" --url "$2" --host "${bench_host:-backend}" --rate "$3" \
    --duration "${4}s" --connections "$5" --out "$raw" >/dev/null 2>&1
  python3 - "$raw" "$out/$1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d["latency_ms"]
pcts = [{"Percentile": p, "Value": lat[k] / 1e3} for p, k in ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p99.9"))]
json.dump({"DurationHistogram": {"Percentiles": pcts, "Count": d["count"]},
           "ActualQPS": d["achieved_rps"], "RetCodes": {"200": d["count"] - d["errors"]}},
          open(sys.argv[2], "w"))
PY
  rm -f "$raw"
}
