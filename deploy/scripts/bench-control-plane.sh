#!/usr/bin/env bash
# Control-plane propagation benchmark (issue 3). Prints numbers.
#
# A real Consul dev agent with SERVICES × INSTANCES instances; tether-control
# watching it (pinned to core 1); SUBSCRIBERS lightweight long-poll clients
# (tether-cp-bench, the real protocol, core 0 with Consul; they read each
# snapshot's version and count its endpoints without a full JSON parse, since
# 200 parses of 500 KiB on one core would measure the client, not the control
# plane: real proxies parse on their own CPUs). CHANGES catalog
# changes one at a time; for each, the time from the Consul API call
# returning to every subscriber holding the new state. Also the control
# plane's RSS (idle after sync, and peak) and CPU seconds over the run.
#
# The control plane holds one blocking query per Consul service, so the agent's
# per-client connection limit (default 200) is raised to SERVICES + 400.
#
# Usage: deploy/scripts/bench-control-plane.sh   Env: SERVICES=1000 INSTANCES=5 SUBSCRIBERS=200 CHANGES=20
set -euo pipefail
cd "$(dirname "$0")/../.."
consul=$(deploy/scripts/install-consul.sh)
cargo build --release --quiet -p tether-control -p tether-examples
bin=target/release
pin0="taskset -c 0"; pin1="taskset -c 1"
[ "$(nproc)" -ge 2 ] || { pin0=""; pin1=""; }
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM

$pin0 "$consul" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -http-port=18600 -dns-port=-1 -grpc-port=-1 \
  -serf-lan-port=18601 -serf-wan-port=18602 -server-port=18603 -log-level=warn \
  -hcl "limits { http_max_conns_per_client = $(( ${SERVICES:-1000} + 400 )) }" >"$work/consul.log" 2>&1 &
pids+=($!)
# The leader is `""` until the dev agent has elected itself.
for _ in $(seq 150); do
  leader=$(curl -fsS http://127.0.0.1:18600/v1/status/leader 2>/dev/null || true)
  [ -n "$leader" ] && [ "$leader" != '""' ] && break
  sleep 0.2
done
printf 'mesh:\n  catalog:\n    consul: { address: "http://127.0.0.1:18600" }\n' >"$work/mesh.yaml"
$pin1 "$bin/tether-control" serve --config "$work/mesh.yaml" --listen 127.0.0.1:18610 >"$work/control.log" 2>&1 &
control=$!
pids+=($control)
for _ in $(seq 100); do curl -fsS -o /dev/null http://127.0.0.1:18610/ready 2>/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$control/stat"; }
before=$(ticks)
$pin0 "$bin/tether-cp-bench" --consul http://127.0.0.1:18600 --control-plane http://127.0.0.1:18610 \
  --services "${SERVICES:-1000}" --instances "${INSTANCES:-5}" --subscribers "${SUBSCRIBERS:-200}" --changes "${CHANGES:-20}" \
  --control-pid "$control"
after=$(ticks)
rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$control/status")
hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$control/status")
echo "tether-control: RSS now $((rss / 1024)) MiB, peak $((hwm / 1024)) MiB; CPU $(( (after - before) / $(getconf CLK_TCK) )) s over the whole run (registration, sync, changes)"
