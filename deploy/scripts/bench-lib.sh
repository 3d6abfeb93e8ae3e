# Shared pieces of the benchmark scripts (sourced, not run).
# Method: shared/BENCH.md. Load generator and backend on core 0, proxies on
# core 1 (when the machine has two cores or more).

bench_setup() { # OUT-DIR
  cd "$(dirname "${BASH_SOURCE[0]}")/../.."
  out=$1
  mkdir -p "$out"
  rm -f "$out"/*.json "$out"/*.txt
  fortio=${FORTIO:-$(deploy/scripts/install-fortio.sh)}
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

# load NAME URL QPS SECONDS CONNS: fortio open loop (QPS 0 = closed loop),
# 10 µs histogram resolution, JSON into $out/NAME.json.
load() {
  $pin0 "$fortio" load -quiet -qps "$3" -t "${4}s" -c "$5" -p "50,90,99,99.9" -r 0.00001 \
    -H "Host: ${bench_host:-backend}" -json "$out/$1.json" "$2" >/dev/null 2>&1
}
