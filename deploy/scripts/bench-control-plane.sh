#!/usr/bin/env bash
# Control-plane propagation benchmark at issue #16's scale. Prints numbers.
#
# A real Consul dev agent with SERVICES × INSTANCES instances; REPLICAS
# tether-control replicas (`serve` on their own ports, one mesh.yaml)
# watching it; SUBSCRIBERS lightweight long-poll clients spread over the
# replicas (tether-cp-bench: the real protocol with deltas, `&delta=`, as
# proxies poll; no proxy). Subscriber i is a proxy of svc-(i % SERVICES);
# what each service's proxies hold is declared in the mesh.yaml
# (`services.<name>.upstreams`, written by tether-cp-bench --write-mesh):
# every ALL_EVERY-th service holds the whole mesh, every other svc-N holds
# UPSTREAMS upstreams (svc-(N+1)…). RATE catalog changes a second for
# DURATION seconds (one instance deregistered or re-registered each); for
# each, the time from the Consul write returning to every subscriber holding
# that service holding the change. Also bytes sent per change (delta and
# full, from the replicas' metrics), each replica's CPU (cores over the
# change window), RSS and the Consul connections it holds.
#
# Nothing is pinned: Consul, the replicas and the client share the cores.
#
# Each replica holds at most 11 connections to Consul (the bounded catalog
# watch); the agent's per-client limit (default 200; everything comes from
# 127.0.0.1) is still raised for the benchmark client, which registers the
# instances and makes the changes over many connections at once.
#
# Usage: deploy/scripts/bench-control-plane.sh
# Env: SERVICES=1000 INSTANCES=10 SUBSCRIBERS=10000 REPLICAS=2 RATE=10 DURATION=60 ALL_EVERY=50 UPSTREAMS=3
set -euo pipefail
cd "$(dirname "$0")/../.."
services=${SERVICES:-1000}
instances=${INSTANCES:-10}
subscribers=${SUBSCRIBERS:-10000}
replicas=${REPLICAS:-2}
rate=${RATE:-10}
duration=${DURATION:-60}
# Bounds: the run stays a benchmark, not a soak.
[ "$subscribers" -le 20000 ] && [ "$services" -le 5000 ] && [ "$instances" -le 50 ] \
  && [ "$replicas" -ge 1 ] && [ "$replicas" -le 4 ] && [ "$rate" -le 100 ] && [ "$duration" -le 600 ] \
  || { echo "out of bounds: SUBSCRIBERS<=20000 SERVICES<=5000 INSTANCES<=50 REPLICAS 1-4 RATE<=100 DURATION<=600" >&2; exit 2; }
# Every subscriber is a connection: the client needs one descriptor each,
# each replica one per subscriber it serves plus its Consul watches.
need=$((subscribers + services + 1000))
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge "$need" ] || { echo "ulimit -n is $(ulimit -n); $need file descriptors are needed" >&2; exit 2; }

consul=$(deploy/scripts/install-consul.sh)
cargo build --release --quiet -p tether-control -p tether-examples
bin=target/release
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM

"$consul" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -http-port=18600 -dns-port=-1 -grpc-port=-1 \
  -serf-lan-port=18601 -serf-wan-port=18602 -server-port=18603 -log-level=warn \
  -hcl "limits { http_max_conns_per_client = $(( services + 400 )) }" >"$work/consul.log" 2>&1 &
pids+=($!)
# The leader is `""` until the dev agent has elected itself.
for _ in $(seq 150); do
  leader=$(curl -fsS http://127.0.0.1:18600/v1/status/leader 2>/dev/null || true)
  [ -n "$leader" ] && [ "$leader" != '""' ] && break
  sleep 0.2
done
shape=(--services "$services" --instances "$instances" --subscribers "$subscribers"
  --all-every "${ALL_EVERY:-50}" --upstreams "${UPSTREAMS:-3}")
"$bin/tether-cp-bench" --consul http://127.0.0.1:18600 "${shape[@]}" --write-mesh "$work/mesh.yaml"
# Register first: replicas watching while 10,000 instances arrive one by one
# would recompute every snapshot per registration (and slow Consul down).
"$bin/tether-cp-bench" --consul http://127.0.0.1:18600 "${shape[@]}" --register-only
urls=(); control_pids=()
for r in $(seq "$replicas"); do
  port=$((18610 + r))
  "$bin/tether-control" serve --config "$work/mesh.yaml" --listen "127.0.0.1:$port" >"$work/control-$r.log" 2>&1 &
  control_pids+=($!); pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
for url in "${urls[@]}"; do
  for _ in $(seq 600); do curl -fsS -o /dev/null "$url/ready" 2>/dev/null && break; sleep 0.1; done
done
join() { local IFS=,; echo "$*"; }
"$bin/tether-cp-bench" --consul http://127.0.0.1:18600 "${shape[@]}" \
  --control-planes "$(join "${urls[@]}")" --control-pids "$(join "${control_pids[@]}")" \
  --rate "$rate" --duration "$duration" --registered
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); $(uname -r); release build; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
