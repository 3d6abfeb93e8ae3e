#!/usr/bin/env bash
# Resident memory per idle downstream connection of one sidecar (issue #18).
#
#   deploy/scripts/bench/connmem.sh [CONNECTIONS=10000]
#   Env: CASES="outbound-h1 inbound-mtls-h1 outbound-h2c inbound-mtls-h2" (the default: all)
#        PROXY=path/to/tether-proxy (default: this tree's release build), to measure an older build
#
# For each case a fresh release tether-proxy (one worker thread, like
# profile.sh) in front of tether-sample; tether-connmem (examples/src/connmem.rs)
# opens CONNECTIONS connections to one listener and reads the proxy's VmRSS
# before, with all of them open and never used, and after one keep-alive
# request on each (answered; the connections then stay open and idle). Prints
# KiB per connection = (VmRSS after - VmRSS before) / CONNECTIONS for both.
# Cases:
#   outbound-h1      outbound listener, plaintext HTTP/1.1 (an app's connections)
#   inbound-mtls-h1  inbound listener, mTLS (TLS 1.3, a mesh client certificate
#                    from tether-pki), HTTP/1.1 (ALPN http/1.1)
#   outbound-h2c     outbound listener, h2c with prior knowledge, one stream each
#   inbound-mtls-h2  inbound listener, mTLS, ALPN h2 (how sidecars call each other)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"
n=${1:-10000}
cases=${CASES:-outbound-h1 inbound-mtls-h1 outbound-h2c inbound-mtls-h2}
# Each side holds n sockets (the client its ends, the proxy its own).
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((n + 1000)) ]; then
  echo "connmem.sh: ulimit -n is $(ulimit -n), too few for $n connections" >&2; exit 1
fi
cargo build --release --quiet -p tether-proxy -p tether-examples
bin=$root/target/release
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-connmem.XXXXXX")
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
wait_http() { # URL: 30 s at most
  for _ in $(seq 300); do curl -fsS -m 2 -o /dev/null -H "Host: api" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "connmem.sh: nothing answers at $1" >&2; exit 1
}
wait_port() { # HOST PORT: 30 s at most
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "connmem.sh: nothing listens on $1:$2" >&2; exit 1
}

backend=127.0.0.1:18390
start backend "$bin/tether-sample" --name backend --listen $backend --body-size 1024
wait_http "http://$backend/"
"$bin/tether-pki" init --dir "$work/pki" >/dev/null
for svc in web api; do "$bin/tether-pki" issue --dir "$work/pki" --service $svc --out "$work/pki/$svc" >/dev/null; done
cat >"$work/api.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "$backend" } ]
YAML

port=16950
echo "connections per case: $n; $(nproc) cores; $(uname -r); proxy: $("${PROXY:-$bin/tether-proxy}" --version 2>/dev/null || echo tether-proxy)"
printf '%-16s %12s %12s %14s %14s\n' case "rss before" "rss opened" "KiB/conn idle" "KiB/conn used"
for case in $cases; do
  admin=$port outbound=$((port + 1)) inbound=$((port + 2)); port=$((port + 10))
  # Idle connections must outlive the measurement: no header-read timeout
  # closes them meanwhile.
  proxy=("${PROXY:-$bin/tether-proxy}" --worker-threads 1 --service api --snapshot "$work/api.yaml"
    --admin 127.0.0.1:$admin --outbound 127.0.0.1:$outbound --inbound 127.0.0.1:$inbound --app $backend
    --header-read-timeout 600s --max-connections $((n + 100)))
  client=("$bin/tether-connmem" --connections "$n" --host api)
  case $case in
    outbound-h1) client+=(--addr 127.0.0.1:$outbound --proto h1) ;;
    outbound-h2c) client+=(--addr 127.0.0.1:$outbound --proto h2) ;;
    inbound-mtls-h1|inbound-mtls-h2)
      proxy+=(--identity-dir "$work/pki/api" --trust-bundle "$work/pki/ca.pem")
      client+=(--addr 127.0.0.1:$inbound --identity-dir "$work/pki/web" --trust-bundle "$work/pki/ca.pem" --server api)
      [ $case = inbound-mtls-h1 ] && client+=(--proto h1) || client+=(--proto h2) ;;
    *) echo "connmem.sh: unknown case $case" >&2; exit 1 ;;
  esac
  start "proxy-$case" "${proxy[@]}"
  proxy_pid=$last_pid
  wait_port 127.0.0.1 $outbound
  wait_port 127.0.0.1 $inbound
  # Warm the outbound request path once (first-use allocations are not per connection).
  case $case in outbound-*) curl -fsS -m 5 -o /dev/null -H "Host: api" "http://127.0.0.1:$outbound/" 2>/dev/null || true ;; esac
  sleep 1
  "${client[@]}" --pid "$proxy_pid" >"$work/$case.out" 2>"$work/$case.err" || {
    echo "connmem.sh: $case failed: $(cat "$work/$case.err")" >&2; exit 1; }
  val() { sed -n "s/^$1=//p" "$work/$case.out"; }
  printf '%-16s %9s KiB %9s KiB %14s %14s\n' "$case" "$(val rss_before_kib)" "$(val rss_opened_kib)" \
    "$(val kib_per_idle_never_used)" "$(val kib_per_idle_after_one_request)"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
done
