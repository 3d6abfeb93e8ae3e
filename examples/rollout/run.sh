#!/usr/bin/env bash
# Canary rollouts of `api` v2, watched through `tether-control rollout status`:
# first to a v2 that fails 20 % of requests (rolls back by itself), then to a
# healthy v2 (promotes). Everything on loopback, plaintext, static catalog.
#
#   tether-load → web app (:18280) → web's sidecar (:15201) ─┬─► api v1 sidecar (:15243) → api v1 app (:18281)
#                                                            └─► api v2 sidecar (:15253) → api v2 app (:18282)
#   web's sidecar reports per-subset stats every second ──► tether-control (:15210) ──► split api v1/v2
#
# Usage: examples/rollout/run.sh        Env: TETHER_PROFILE=release|debug (default release)
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/scripts/lib-local.sh  # build, $work, start, wait_http, cleanup on exit
control=http://127.0.0.1:15210
rollout() { "$bin/tether-control" rollout "$@" --control-plane "$control"; }

cat >"$work/mesh.yaml" <<'YAML'
mesh:
  catalog:
    static:
      services:
        # Each instance is its sidecar's inbound listener; the tag is its version.
        api: [ { address: "127.0.0.1:15243", tags: [v1] }, { address: "127.0.0.1:15253", tags: [v2] } ]
        web: [ { address: "127.0.0.1:15203" } ]
services:
  web: {}
  api:
    subsets: { v1: { tags: [v1] }, v2: { tags: [v2] } }
    split: [ { subset: v1, weight: 100 } ]
YAML

start control "$bin/tether-control" serve --config "$work/mesh.yaml" --listen 127.0.0.1:15210 \
  --rollout-state "$work/rollouts.json"
wait_http $control/ready
start api-v1-app "$bin/tether-sample" --name api-v1 --listen 127.0.0.1:18281
start api-v2-app "$bin/tether-sample" --name api-v2 --listen 127.0.0.1:18282 --fail-percent 20
v2_app=$last
start web-app "$bin/tether-sample" --name web --listen 127.0.0.1:18280 --call api --sidecar 127.0.0.1:15201
sidecar() { # name service admin outbound inbound app [flags]
  local name=$1 service=$2 admin=$3 outbound=$4 inbound=$5 app=$6; shift 6
  start "$name-proxy" "$bin/tether-proxy" --service "$service" --proxy-id "$name" --control-plane $control \
    --admin "$admin" --outbound "$outbound" --inbound "$inbound" --app "$app" "$@"
}
sidecar api-v1 api 127.0.0.1:15220 127.0.0.1:15221 127.0.0.1:15243 127.0.0.1:18281
sidecar api-v2 api 127.0.0.1:15230 127.0.0.1:15231 127.0.0.1:15253 127.0.0.1:18282
sidecar web web 127.0.0.1:15200 127.0.0.1:15201 127.0.0.1:15203 127.0.0.1:18280 --stats-interval 1s
for admin in 127.0.0.1:15200 127.0.0.1:15220 127.0.0.1:15230; do
  "$bin/tether-proxy" wait-ready --admin "$admin" --timeout 20s >/dev/null ||
    { echo "sidecar at $admin did not become ready"; tail -n 20 "$work"/*.log; exit 1; }
done
echo "==> mesh ready: $(curl -fsS http://127.0.0.1:18280/)"

# One canary: load through web, start the rollout, print its status every
# 2 s until it is no longer active (at most 90 s); check where it ended.
canary() { # expected-final-state
  start load "$bin/tether-load" --url http://127.0.0.1:18280/ --rate 50 --connections 4 --duration 60s
  local load=$last
  rollout start api --from v1 --to v2 --steps 10,25,50,100 --interval 5s --min-requests 20
  local state=active
  for _ in $(seq 45); do
    sleep 2
    echo "--- $(date +%T)"
    rollout status api
    state=$(curl -fsS $control/v1/rollouts | python3 -c 'import json,sys; print(json.load(sys.stdin)["rollouts"][0]["phase"])')
    [ "$state" != active ] && break
  done
  kill -TERM "$load" 2>/dev/null || true
  if [ "$state" != "$1" ]; then echo "UNEXPECTED: the rollout ended $state, not $1"; tail -n 30 "$work/control.log"; exit 1; fi
  echo "==> the rollout ended $state, as expected"
}

echo
echo "==> canary 1: api v2 fails 20 % of requests: expect a rollback"
canary rolled-back
echo "==> after the rollback every request goes to v1: $(for _ in 1 2 3; do curl -fsS http://127.0.0.1:18280/ | grep -o 'api-v[12]'; done | sort | uniq -c | tr -s ' \n' ' ')"

echo
echo "==> canary 2: a fixed v2 (restarted without --fail-percent): expect a promotion"
kill -TERM "$v2_app"
sleep 0.5
start api-v2-app "$bin/tether-sample" --name api-v2 --listen 127.0.0.1:18282
sleep 0.5
canary promoted
echo "==> after the promotion every request goes to v2: $(for _ in 1 2 3; do curl -fsS http://127.0.0.1:18280/ | grep -o 'api-v[12]'; done | sort | uniq -c | tr -s ' \n' ' ')"
echo
echo "==> the control plane's rollout metrics:"
curl -fsS $control/metrics | grep -E '^tether_control_rollout' | sed 's/^/    /'
echo "==> its log of each step:"
grep 'rollout step' "$work/control.log" | sed 's/^/    /' | cut -c1-220
echo "==> to make v2 permanent, set api's split in mesh.yaml to [ { subset: v2, weight: 100 } ]"
