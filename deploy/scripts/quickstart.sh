#!/usr/bin/env bash
# Tether quickstart: builds Tether and runs a two-service mesh on loopback.
#
#   curl → web app (:18080) → web's sidecar (outbound :15001)
#        ══ mTLS, SPIFFE identities ══> api's sidecar (inbound :15543, authorizes web) → api app (:18081)
#
# A development CA (tether-pki) issues both sidecars their certificates.
#
# Usage: deploy/scripts/quickstart.sh          # runs until Ctrl-C
#        deploy/scripts/quickstart.sh --once   # sends traffic, prints, stops (CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
once=false
[ "${1:-}" = "--once" ] && once=true

echo "==> building (release)"
cargo build --release --quiet -p tether-proxy -p tether-examples
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo "==> stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
start() { local name=$1; shift; "$@" >"$work/$name.log" 2>&1 & pids+=($!); }

"$bin/tether-pki" init --dir "$work/pki" >/dev/null
for svc in web api; do "$bin/tether-pki" issue --dir "$work/pki" --service $svc --out "$work/pki/$svc" >/dev/null; done
tls() { echo --identity-dir "$work/pki/$1" --trust-bundle "$work/pki/ca.pem"; }

start api-app "$bin/tether-sample" --name api --listen 127.0.0.1:18081
start web-app "$bin/tether-sample" --name web --listen 127.0.0.1:18080 --call api --sidecar 127.0.0.1:15001
# shellcheck disable=SC2046
start api-proxy "$bin/tether-proxy" --service api --snapshot examples/standalone/api.yaml $(tls api) \
  --admin 127.0.0.1:15100 --outbound 127.0.0.1:15101 --inbound 127.0.0.1:15543 --app 127.0.0.1:18081
# shellcheck disable=SC2046
start web-proxy "$bin/tether-proxy" --service web --snapshot examples/standalone/web.yaml $(tls web) \
  --admin 127.0.0.1:15000 --outbound 127.0.0.1:15001 --inbound 127.0.0.1:15443 --app 127.0.0.1:18080

for admin in 127.0.0.1:15000 127.0.0.1:15100; do
  if ! "$bin/tether-proxy" wait-ready --admin "$admin" --timeout 20s; then
    echo "sidecar at $admin did not become ready; logs:"; tail -n 20 "$work"/*.log; exit 1
  fi
done
echo "==> sidecars ready; sending 20 requests through web → api"
ok=0
for _ in $(seq 20); do
  if body=$(curl -fsS http://127.0.0.1:18080/); then ok=$((ok + 1)); fi
done
echo "    last answer: $body"
echo "    $ok/20 succeeded"
echo
echo "==> web's sidecar, outbound to api (from /metrics):"
curl -fsS http://127.0.0.1:15000/metrics | grep -E '^tether_requests_total\{direction="outbound",service="api",status_class="2xx"' || true
echo "==> api's sidecar identity (from /config):"
curl -fsS http://127.0.0.1:15100/config | grep -E '"spiffe_id"' || true
echo "==> a plaintext client at api's sidecar is refused:"
if curl -fsS -m 2 -H 'Host: api' http://127.0.0.1:15543/ >/dev/null 2>&1; then echo "    UNEXPECTED: answered"; exit 1; else echo "    refused (mTLS required)"; fi
echo
cat <<INFO
Where to look:
  web sidecar admin  http://127.0.0.1:15000/metrics  /config  /endpoints  /ready
  api sidecar admin  http://127.0.0.1:15100/metrics  /config  /endpoints  /ready
  try an unknown service:  curl -i -H 'Host: nope' http://127.0.0.1:15001/
  api's policy only lets web GET: edit examples/standalone/api.yaml and watch 403s
  edit examples/standalone/web.yaml: the change applies live (watch /config)
INFO
[ "$ok" -eq 20 ] || { echo "some requests failed; logs in $work"; tail -n 20 "$work"/*.log; exit 1; }
if $once; then exit 0; fi
echo "Running; Ctrl-C to stop."
wait
