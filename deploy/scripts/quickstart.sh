#!/usr/bin/env bash
# Tether quickstart: builds Tether and runs a two-service mesh on loopback.
#
#   tether-control (https :15010, admin :15011) ◄── mesh.yaml (+ Consul with --consul)
#        │ snapshots (long-poll)   ▲ CSRs (join token, then the current certificate)
#   curl → web app (:18080) → web's sidecar (outbound :15001)
#        ══ mTLS, SPIFFE identities ══> api's sidecar (inbound :15543, authorizes web) → api app (:18081)
#
# `tether-control ca init` makes the mesh CA; each sidecar gets a join token
# and obtains its certificate from the control plane (its key never leaves it).
# With Jaeger already built (deploy/scripts/install-jaeger.sh), traces go there.
#
# Usage: deploy/scripts/quickstart.sh [--consul] [--once]     Env: TETHER_PROFILE=release|debug
#   --consul  use a local Consul dev agent as the catalog (examples/mesh-consul.yaml)
#   --once    send traffic, print, stop (what CI runs); default: run until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/../.."
once=false; consul=false
for arg in "$@"; do
  case $arg in
    --once) once=true ;;
    --consul) consul=true ;;
    *) echo "usage: $0 [--consul] [--once]" >&2; exit 2 ;;
  esac
done

source deploy/scripts/lib-local.sh  # build, $work, start, wait_http, cleanup on exit

"$bin/tether-control" ca init --dir "$work/ca" --trust-domain tether.local >/dev/null
for svc in web api; do
  "$bin/tether-control" token create --service $svc --ca-dir "$work/ca" --out "$work/$svc.token" 2>/dev/null
done

mesh=examples/mesh.yaml
if $consul; then
  consul_bin=$(deploy/scripts/install-consul.sh)
  start consul "$consul_bin" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -dns-port=-1 -grpc-port=-1
  wait_http http://127.0.0.1:8500/v1/status/leader
  for reg in '{"ID":"api-1","Name":"api","Address":"127.0.0.1","Port":15543,"Tags":["v1"]}' \
             '{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":15443}'; do
    curl -fsS -X PUT -d "$reg" http://127.0.0.1:8500/v1/agent/service/register
  done
  mesh=examples/mesh-consul.yaml
fi
cp "$mesh" "$work/mesh.yaml"
tracing=false
if ls "${TETHER_CACHE:-$HOME/.cache/tether}"/jaeger-*/jaeger >/dev/null 2>&1; then
  start jaeger deploy/scripts/run-jaeger.sh
  wait_http http://127.0.0.1:16686/api/services
  sed -i 's|^  # tracing: .*|  tracing: { otlp_endpoint: "http://127.0.0.1:4317", sample_ratio: 1.0 }|' "$work/mesh.yaml"
  grep -q '^  tracing:' "$work/mesh.yaml" || sed -i 's|^mesh:|mesh:\n  tracing: { otlp_endpoint: "http://127.0.0.1:4317", sample_ratio: 1.0 }|' "$work/mesh.yaml"
  tracing=true
fi

start control "$bin/tether-control" serve --config "$work/mesh.yaml" --listen 127.0.0.1:15010 \
  --admin 127.0.0.1:15011 --ca-dir "$work/ca"
wait_http http://127.0.0.1:15011/ready
start api-app "$bin/tether-sample" --name api --listen 127.0.0.1:18081
start web-app "$bin/tether-sample" --name web --listen 127.0.0.1:18080 --call api --sidecar 127.0.0.1:15001
sidecar() { # service admin outbound inbound app
  start "$1-proxy" "$bin/tether-proxy" --service "$1" --control-plane https://127.0.0.1:15010 \
    --state-dir "$work/state-$1" --token-file "$work/$1.token" --trust-bundle "$work/ca/ca.pem" \
    --admin "$2" --outbound "$3" --inbound "$4" --app "$5"
}
sidecar api 127.0.0.1:15100 127.0.0.1:15101 127.0.0.1:15543 127.0.0.1:18081
sidecar web 127.0.0.1:15000 127.0.0.1:15001 127.0.0.1:15443 127.0.0.1:18080
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
if $tracing; then
  echo "==> traces in Jaeger (spans leave the sidecars in batches, at most 50 ms apart):"
  traces=0
  for _ in $(seq 50); do
    traces=$(curl -fsS "http://127.0.0.1:16686/api/traces?service=web&limit=100" 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("data") or []))' 2>/dev/null || echo 0)
    [ "$traces" -ge 20 ] && break
    sleep 0.2
  done
  echo "    $traces traces of web's requests in Jaeger"
  if [ "$traces" -eq 0 ]; then echo "    no trace reached Jaeger; logs:"; tail -n 20 "$work"/*.log; exit 1; fi
  curl -fsS http://127.0.0.1:15000/metrics | grep -E '^tether_trace_spans_(exported|dropped)_total' | sed 's/^/    /' || true
fi
echo "==> proxies known to the control plane:"
"$bin/tether-control" status --control-plane https://127.0.0.1:15010 --trust-bundle "$work/ca/ca.pem"
echo
cat <<INFO
Where to look:
  control plane      https://127.0.0.1:15010 (proxies only; mTLS)   admin: http://127.0.0.1:15011/v1/status  /metrics
  mesh CA            $work/ca (ca.pem = trust bundle; tether-control token create --service NAME --ca-dir $work/ca)
  web sidecar admin  http://127.0.0.1:15000/metrics  /config  /endpoints  /ready
  api sidecar admin  http://127.0.0.1:15100/metrics  /config  /endpoints  /ready
  try an unknown service:  curl -i -H 'Host: nope' http://127.0.0.1:15001/
  edit $work/mesh.yaml (e.g. api's timeout or the authorization rules): it applies live
INFO
$tracing && echo "  traces: http://127.0.0.1:16686/api/traces?service=web  (Jaeger query API; the UI of this Go-module build is a placeholder)"
$consul && echo "  Consul: http://127.0.0.1:8500/v1/health/service/api  (deregister api-1 and watch /config)"
[ "$ok" -eq 20 ] || { echo "some requests failed; logs:"; tail -n 20 "$work"/*.log; exit 1; }
if $once; then exit 0; fi
echo "Running; Ctrl-C to stop."
wait
