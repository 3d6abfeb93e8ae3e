#!/usr/bin/env bash
# Instruction profile of one proxy hop under a fixed number of requests,
# with valgrind's callgrind (counts instructions, so it is repeatable on a
# noisy machine, unlike timings). Tether against nginx and HAProxy, each as
# one hop in front of the same backend, one worker thread.
#
#   deploy/scripts/bench/profile.sh [REQUESTS=20000]   Env: OUT=bench-results/profile MTLS=1 ONLY_TETHER=1
#
# Prints instructions per request for each proxy (the startup and shutdown
# are included, amortised over REQUESTS), and writes callgrind.out.* and
# `callgrind_annotate` summaries (inclusive, top functions) into OUT.
# MTLS=1 also profiles Tether's client sidecar of an mTLS pair (web → api).
# TRACE=1 also profiles the Tether hop with every request traced (sample
# ratio 1.0, OTLP/gRPC to tether-otlp-sink, which only counts).
# FEATURES=1 also profiles it with an outbound rate limit (high enough never
# to refuse) and a mirror of 10 % of the requests to a second backend.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"
requests=${1:-20000}
out=${OUT:-bench-results/profile}
rate=500  # slow enough that the proxy under valgrind (~30x slower) keeps up
secs=$(( requests / rate ))
mkdir -p "$out"
command -v valgrind >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends valgrind >/dev/null; }
command -v nginx >/dev/null && command -v haproxy >/dev/null || {
  apt-get update -qq; apt-get install -y -qq --no-install-recommends nginx haproxy >/dev/null; }
cargo build --release --quiet -p tether-proxy -p tether-examples
bin=$root/target/release
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-profile.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { local name=$1; shift; "$@" >"$work/$name.log" 2>&1 & pids+=($!); last_pid=$!; }
wait_http() { # URL: 60 s at most (valgrind starts slowly)
  for _ in $(seq 600); do curl -fsS -m 2 -o /dev/null -H "Host: api" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "profile.sh: nothing answers at $1" >&2; exit 1
}
# stop PID: SIGTERM and wait, so callgrind writes its file.
stop() { kill -TERM "$1"; for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1"; }

backend=127.0.0.1:18290
start backend taskset -c 0 "$bin/tether-sample" --name backend --listen $backend --body-size 1024
wait_http "http://$backend/"
vg=(taskset -c 1 valgrind --tool=callgrind --trace-children=no)

# profile NAME URL: drives REQUESTS at RATE over 16 connections, then stops $last_pid.
profile() {
  local name=$1 url=$2 pid=$last_pid
  wait_http "$url"
  taskset -c 0 "$bin/tether-load" --url "$url" --host api --rate $rate --connections 16 \
    --duration "${secs}s" --timeout 10s --out "$work/$name.json" 2>>"$work/load.log"
  tail -n 1 "$work/load.log" >&2
  stop "$pid"
  local ir
  ir=$(callgrind_annotate "$out/callgrind.out.$name" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')
  local n
  n=$(python3 -c "import json,sys; r = json.load(open(sys.argv[1])); print(max(1, r['count']))" "$work/$name.json")
  printf '%-14s %12s instructions / %s requests = %s per request\n' "$name" "$ir" "$n" "$(( ir / n ))"
  callgrind_annotate --inclusive=yes "$out/callgrind.out.$name" 2>/dev/null >"$out/$name.inclusive.txt"
  callgrind_annotate "$out/callgrind.out.$name" 2>/dev/null >"$out/$name.self.txt"
}

cat >"$work/tether.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "$backend" } ]
YAML
start tether "${vg[@]}" --callgrind-out-file="$out/callgrind.out.tether" "$bin/tether-proxy" --worker-threads 1 \
  --service api --snapshot "$work/tether.yaml" --admin 127.0.0.1:16902 --outbound 127.0.0.1:16904 \
  --inbound 127.0.0.1:16903 --app $backend
profile tether http://127.0.0.1:16904/

if [ "${TRACE:-0}" = 1 ]; then
  start sink taskset -c 0 "$bin/tether-otlp-sink" --listen 127.0.0.1:16905
  printf 'mesh: { tracing: { otlp_endpoint: "http://127.0.0.1:16905", sample_ratio: 1.0 } }\n' >"$work/traced.yaml"
  cat "$work/tether.yaml" >>"$work/traced.yaml"
  start tether-traced "${vg[@]}" --callgrind-out-file="$out/callgrind.out.tether-traced" "$bin/tether-proxy" --worker-threads 1 \
    --service api --snapshot "$work/traced.yaml" --admin 127.0.0.1:16906 --outbound 127.0.0.1:16908 \
    --inbound 127.0.0.1:16907 --app $backend
  profile tether-traced http://127.0.0.1:16908/
fi

if [ "${FEATURES:-0}" = 1 ]; then
  shadow=127.0.0.1:18291
  start shadow taskset -c 0 "$bin/tether-sample" --name shadow --listen $shadow --body-size 1024
  wait_http "http://$shadow/"
  cat >"$work/features.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "$backend" } ]
    rate_limit: { requests_per_second: 100000 }
    mirror: { service: shadow, percent: 10 }
  shadow:
    endpoints: [ { address: "$shadow" } ]
YAML
  start tether-features "${vg[@]}" --callgrind-out-file="$out/callgrind.out.tether-features" "$bin/tether-proxy" --worker-threads 1 \
    --service api --snapshot "$work/features.yaml" --admin 127.0.0.1:16936 --outbound 127.0.0.1:16938 \
    --inbound 127.0.0.1:16937 --app $backend
  profile tether-features http://127.0.0.1:16938/
fi

if [ "${ONLY_TETHER:-0}" != 1 ]; then
mkdir -p "$work/nginx/tmp"; chmod -R 777 "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1; master_process off; daemon off; pid $work/nginx/pid; error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/nginx/tmp/b; proxy_temp_path $work/nginx/tmp/p;
  fastcgi_temp_path $work/nginx/tmp/f; uwsgi_temp_path $work/nginx/tmp/u; scgi_temp_path $work/nginx/tmp/s;
  keepalive_requests 1000000;
  upstream next { server $backend; keepalive 128; }
  server { listen 127.0.0.1:16911; location / { proxy_pass http://next; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Host \$host; } }
}
CONF
start nginx "${vg[@]}" --callgrind-out-file="$out/callgrind.out.nginx" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log"
profile nginx http://127.0.0.1:16911/

cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend entry
  bind 127.0.0.1:16921
  default_backend next
backend next
  server next $backend
CONF
start haproxy "${vg[@]}" --callgrind-out-file="$out/callgrind.out.haproxy" haproxy -db -f "$work/haproxy.cfg"
profile haproxy http://127.0.0.1:16921/
fi

if [ "${MTLS:-0}" = 1 ]; then
  "$bin/tether-pki" init --dir "$work/pki" >/dev/null
  for svc in web api; do "$bin/tether-pki" issue --dir "$work/pki" --service $svc --out "$work/pki/$svc" >/dev/null; done
  printf 'services: {}\n' >"$work/api.yaml"
  cat >"$work/web.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "127.0.0.1:16933" } ]
YAML
  start tether-api taskset -c 1 "$bin/tether-proxy" --worker-threads 1 --service api --snapshot "$work/api.yaml" \
    --admin 127.0.0.1:16932 --outbound 127.0.0.1:16934 --inbound 127.0.0.1:16933 --app $backend \
    --identity-dir "$work/pki/api" --trust-bundle "$work/pki/ca.pem"
  start tether-web-mtls "${vg[@]}" --callgrind-out-file="$out/callgrind.out.tether-web-mtls" "$bin/tether-proxy" \
    --worker-threads 1 --service web --snapshot "$work/web.yaml" --admin 127.0.0.1:16930 \
    --outbound 127.0.0.1:16931 --inbound 127.0.0.1:16935 --app 127.0.0.1:9 \
    --identity-dir "$work/pki/web" --trust-bundle "$work/pki/ca.pem"
  profile tether-web-mtls http://127.0.0.1:16931/
fi
echo "annotations: $out/*.inclusive.txt, $out/*.self.txt (callgrind_annotate)"
