#!/usr/bin/env bash
# Checks the running compose demo (deploy/compose/up.sh) from outside, the
# way an operator would, and fails on the first thing that does not hold:
#   1. web's app reaches api through both sidecars (web's outbound and the
#      api sidecars' inbound metrics), split over v1 and v2, all over mTLS
#      (no plaintext connection accepted by an api sidecar; web's identity
#      in api's access log);
#   2. a container on the same network without a sidecar cannot reach api's
#      app port (the capture sends it to the mTLS listener, which refuses);
#      from web's pod a GET reaches api and a POST is denied (authorization);
#   3. both api instances are registered in Consul, passing; a stopped
#      sidecar's registration goes, and comes back when it starts;
#   4. traces of web -> api are in Jaeger;
#   5. `docker-compose restart api-v1` (SIGTERM: deregister, grace, drain)
#      under a bounded load from web's pod loses no request, and api-v1's
#      registration is back afterwards;
#   6. restarting the Consul container (a dev server: it comes back empty)
#      under that load loses no request, and every sidecar registers again;
#   7. `docker kill api-v1` (no drain) loses no idempotent request;
#   8. a canary of api v2 (`tether-control rollout start` in the control
#      plane's container) promotes on web's sidecar's own measurements under
#      load: api-v1 then gets nothing; `rollout undo` switches back at once;
#      no request lost.
# Every wait is bounded; every load is bounded in rate and time.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
compose() { docker-compose -p tether -f "$here/docker-compose.yml" "$@"; }
say() { printf '[check] %s\n' "$*"; }
fail() { say "FAILED: $*"; exit 1; }
WEB=15100 V1=15101 V2=15102

# sum of a metric's samples whose line matches the regex $2, from admin port $1
metric() {
  curl -fsS -m 5 "http://127.0.0.1:$1/metrics" 2>/dev/null \
    | awk -v re="$2" '$0 !~ /^#/ && $0 ~ re { s += $NF } END { printf "%d\n", s + 0 }'
}
wait_for() { # SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 2))); do "$@" && return 0; sleep 0.5; done
  fail "$what (waited ${t}s)"
}
more_than() { [ "$(metric "$1" "$2")" -gt "$3" ]; }

# 1. Traffic through the mesh.
wait_for 120 "web's sidecar sends 2xx to api" \
  more_than $WEB 'tether_requests_total\{direction="outbound",service="api",status_class="2xx"' 20
wait_for 60 "api-v1 serves inbound requests" more_than $V1 'tether_requests_total\{direction="inbound".*status_class="2xx"' 0
wait_for 60 "api-v2 serves inbound requests" more_than $V2 'tether_requests_total\{direction="inbound".*status_class="2xx"' 0
v1=$(metric $V1 'tether_requests_total\{direction="inbound".*status_class="2xx"')
v2=$(metric $V2 'tether_requests_total\{direction="inbound".*status_class="2xx"')
say "split: api-v1 served $v1, api-v2 served $v2 (configured 90/10)"
[ "$v1" -gt "$v2" ] || fail "api-v1 ($v1) should serve more than api-v2 ($v2)"
for port in $V1 $V2; do
  plain=$(metric $port 'tether_inbound_plaintext_connections_total')
  [ "$plain" -eq 0 ] || fail "an api sidecar accepted $plain plaintext connections"
done
# grep -c reads to the end: with -q, `docker logs` would die of SIGPIPE and pipefail fail the line.
from_web_logged=$("$DOCKER" logs tether_api-v1_1 2>/dev/null \
  | grep -c '"peer_identity":"spiffe://tether.local/service/web","method":"GET","authority":"api:8080"' || true)
[ "$from_web_logged" -gt 0 ] || fail "api-v1's access log has no GET for api:8080 from web's mesh identity"
say "ok: web -> api through both sidecars over mTLS (peer spiffe://tether.local/service/web in api's access log)"

# 2. No sidecar, no way in.
# grep -c, not -q: an early exit would let SIGPIPE fail the pipe and hide a 200.
answered=$("$DOCKER" run --rm --network tether_default --entrypoint /bin/bash tether-init:dev -c \
  'exec 3<>/dev/tcp/api/8080 && printf "GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n" >&3 && timeout 5 cat <&3' \
  2>/dev/null | grep -c '^HTTP/1.1 200' || true)
[ "$answered" = 0 ] || fail "a container without a sidecar got an answer from api's app port"
say "ok: a caller without a sidecar is refused at api's app port"
from_web() { # METHOD: the status line of METHOD / to http://api:8080 from web's pod (captured)
  "$DOCKER" run --rm --network container:tether_web-pod_1 --entrypoint /bin/bash tether-init:dev -c \
    "exec 3<>/dev/tcp/api/8080 && printf '$1 / HTTP/1.1\r\nHost: api:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' >&3 && timeout 5 head -1 <&3" \
    2>/dev/null | tr -d '\r'
}
get=$(from_web GET); post=$(from_web POST)
[ "${get%% *}" = HTTP/1.1 ] && [ "$(cut -d' ' -f2 <<<"$get")" = 200 ] || fail "GET from web's pod to api: '$get'"
[ "$(cut -d' ' -f2 <<<"$post")" = 403 ] || fail "POST from web's pod to api should be denied (403): '$post'"
say "ok: authorization: from web's pod GET api -> 200, POST api -> 403"

# 3. Registrations.
passing() { # how many passing instances of api Consul has
  curl -fsS -m 5 "http://127.0.0.1:18500/v1/health/service/api?passing" 2>/dev/null \
    | grep -oE '"ID": *"api-v[12]"' | sort -u | wc -l
}
two_passing() { [ "$(passing)" -eq 2 ]; }
wait_for 60 "both api instances registered and passing in Consul" two_passing
say "ok: api-v1 and api-v2 registered in Consul, passing"
one_passing() { [ "$(passing)" -eq 1 ]; }
compose stop api-v2 >/dev/null 2>&1
wait_for 30 "api-v2's registration gone once its sidecar stopped" one_passing
compose start api-v2 >/dev/null 2>&1
wait_for 60 "api-v2 registered again once its sidecar started" two_passing
say "ok: a stopped sidecar's registration goes and comes back when it starts"

# 4. Traces.
traces() { curl -fsS -m 5 "http://127.0.0.1:16686/api/traces?service=web&limit=20" 2>/dev/null | grep -c '"traceID"' || true; }
have_traces() { [ "$(traces)" -gt 0 ]; }
wait_for 60 "traces of web in Jaeger" have_traces
say "ok: web's traces are in Jaeger"

# 5, 6. Restarts under load from web's pod (50 rps, bounded).
results=$(mktemp -d); chmod 0777 "$results"; trap 'rm -rf "$results"' EXIT
load() { # SECONDS: runs tether-load in web's pod, prints its summary line (JSON in $results/load.json)
  "$DOCKER" run --rm --network container:tether_web-pod_1 -v "$results:/out" --entrypoint /usr/local/bin/tether-load \
    tether:dev --url http://127.0.0.1:8080/ --rate 50 --connections 4 --duration "$1s" --timeout 5s \
    --out /out/load.json 2>&1 | grep '^tether-load' | tail -1
}
errors_in() { sed -n 's/.* \([0-9][0-9]*\) errors.*/\1/p' <<<"$1"; }
under_load() { # WHAT COMMAND...: the command 5 s into a 20 s load; no failed request allowed
  local what=$1; shift
  local out; out=$(mktemp)
  load 20 >"$out" & local pid=$!
  sleep 5
  "$@" >/dev/null 2>&1
  wait $pid
  local line; line=$(cat "$out"); rm -f "$out"
  say "$what: $line"
  [ -n "$line" ] || fail "$what: the load generator printed nothing"
  [ "$(errors_in "$line")" = 0 ] || { explain_errors; fail "$what lost requests"; }
}
explain_errors() { # what web's sidecar and app saw of the failed requests
  say "failures by kind (tether-load): $(tr -d '\n ' <"$results/load.json" 2>/dev/null | grep -o '"error_kinds":{[^}]*}')"
  say "web's sidecar, answers other than 2xx (access log):"
  "$DOCKER" logs tether_web_1 2>/dev/null | grep '"direction":"outbound"' | grep -v '"status":2' | tail -5 || true
  say "web's sidecar, errors and retries:"
  curl -fsS -m 5 "http://127.0.0.1:$WEB/metrics" 2>/dev/null \
    | grep -E '^tether_(proxy_errors|retries|retries_skipped)_total' || true
  say "web's sidecar log (warnings and errors):"
  "$DOCKER" logs tether_web_1 2>&1 | grep -E ' (WARN|ERROR) ' | tail -10 || true
  say "web's app log:"
  "$DOCKER" logs tether_web-app_1 2>&1 | tail -5 || true
}
under_load "restart api-v1 (drain)" compose restart api-v1
wait_for 60 "api-v1 registered again after its restart" two_passing
say "ok: restart lost no request; api-v1 is back in Consul"
under_load "restart the Consul container" compose restart consul
wait_for 60 "api-v1 and api-v2 registered again after Consul's restart" two_passing
holds=$("$DOCKER" logs tether_control_1 2>&1 | grep -c "consul answers again after a failure" || true)
[ "$holds" -gt 0 ] || fail "the control plane started no resync hold when Consul came back empty"
say "ok: a Consul restart lost no request (the control plane held the instances while they re-registered); the registrations came back"
under_load "kill api-v1 (no drain)" "$DOCKER" kill tether_api-v1_1
compose up -d --no-recreate api-v1 >/dev/null 2>&1 || compose start api-v1 >/dev/null
say "ok: kill lost no idempotent request"
wait_for 60 "api-v1 registered again after the kill" two_passing

# 8. Canary of api v2, promoted by the proxies' measurements, then undone.
rollout() { # ARGS...: tether-control rollout ARGS in the control plane's container (changes only from its host)
  local verb=$1; shift
  "$DOCKER" exec tether_control_1 tether-control rollout "$verb" "$@" \
    --control-plane https://127.0.0.1:15010 --trust-bundle /ca/ca.pem
}
promoted() { [ "$(rollout status api 2>/dev/null | grep -c promoted || true)" -gt 0 ]; }
out=$(mktemp)
load 40 >"$out" & pid=$!
rollout start api --from v1 --to v2 --steps 50,100 --interval 5s --min-requests 20 >/dev/null \
  || fail "rollout start was refused"
wait_for 60 "the canary of api v2 promoted" promoted
say "rollout status after promotion:"; rollout status api | sed 's/^/[check]   /'
before=$(metric $V1 'tether_requests_total\{direction="inbound".*status_class="2xx"')
sleep 3
after=$(metric $V1 'tether_requests_total\{direction="inbound".*status_class="2xx"')
[ "$after" -eq "$before" ] || fail "api-v1 still served $((after - before)) requests after v2 was promoted"
rollout undo api >/dev/null || fail "rollout undo was refused"
wait_for 20 "api-v1 serves again after the undo" more_than $V1 'tether_requests_total\{direction="inbound".*status_class="2xx"' "$after"
wait $pid; line=$(cat "$out"); rm -f "$out"
say "canary, promote and undo: $line"
[ "$(errors_in "$line")" = 0 ] || { explain_errors; fail "the rollout lost requests"; }
steps=$("$DOCKER" logs tether_control_1 2>&1 | grep -c "rollout step" || true)  # -c reads to the end (no SIGPIPE)
[ "$steps" -gt 0 ] || fail "the control plane logged no rollout step"
say "ok: a canary of api v2 promoted on web's own measurements, undo switched back at once, no request lost"
say "all checks passed"
