#!/usr/bin/env bash
# The containers demo in one command: builds the images (deploy/docker/images.sh,
# no registry needed), starts the compose project "tether", waits until
# web's app is up behind its ready sidecar, and prints where to look.
#
#   deploy/compose/up.sh           up (containers keep running)
#   deploy/compose/up.sh --check   up, then deploy/compose/check.sh (what CI runs), then down
#   deploy/compose/up.sh --down    stop and remove everything (volumes too)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
export DOCKER=${DOCKER:-/usr/bin/docker}
compose() { docker-compose -p tether -f "$here/docker-compose.yml" "$@"; }
command -v docker-compose >/dev/null || { echo "up.sh: docker-compose not found: apt-get install docker-compose" >&2; exit 1; }

if [ "${1:-}" = --down ]; then compose down -v --remove-orphans; exit 0; fi

"$root/deploy/docker/images.sh"
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d
up=
for _ in $(seq 240); do  # 120 s at most
  if [ "$("$DOCKER" inspect -f '{{.State.Running}}' tether_web-app_1 2>/dev/null)" = true ]; then up=1; break; fi
  sleep 0.5
done
if [ -z "$up" ]; then
  compose ps >&2; compose logs --tail 20 >&2
  echo "up.sh: web's app did not start within 120 s" >&2; exit 1
fi
cat <<'MSG'
Tether's demo is up (compose project "tether"): web -> api (v1 90 %, v2 10 %),
every hop through both sidecars over mTLS, apps unaware of the mesh.
  containers      docker-compose -p tether -f deploy/compose/docker-compose.yml ps
  web's sidecar   http://127.0.0.1:15100/metrics  /config  /endpoints
  api sidecars    http://127.0.0.1:15101/metrics (v1)  http://127.0.0.1:15102/metrics (v2)
  Consul          http://127.0.0.1:18500/v1/health/service/api
  Jaeger          http://127.0.0.1:16686 (service web)
  checks          deploy/compose/check.sh
  stop            deploy/compose/up.sh --down
MSG
if [ "${1:-}" = --check ]; then
  status=0
  "$here/check.sh" || status=$?
  [ $status -eq 0 ] || { compose ps >&2; compose logs --tail 30 >&2; }
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  exit $status
fi
