#!/usr/bin/env bash
# The containers demo in one command: builds the images (deploy/docker/images.sh,
# no registry needed), starts the compose project, waits until web's app
# answers through the mesh, and prints where to look.
#
#   deploy/compose/up.sh           up, then print status (containers keep running)
#   deploy/compose/up.sh --down    stop and remove everything (volumes too)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
export DOCKER=${DOCKER:-/usr/bin/docker}
compose() { docker-compose -p tether -f "$here/docker-compose.yml" "$@"; }
command -v docker-compose >/dev/null || { echo "up.sh: docker-compose not found: apt-get install docker-compose" >&2; exit 1; }

if [ "${1:-}" = --down ]; then compose down -v --remove-orphans; exit 0; fi

"$root/deploy/docker/images.sh"
compose up -d
# web's app calls api through both sidecars; ask it from inside web's pod.
for _ in $(seq 120); do
  if out=$("$DOCKER" exec tether_web_1 /usr/local/bin/tether-proxy wait-ready --timeout 1s 2>&1) \
    && "$DOCKER" logs tether_web-app_1 >/dev/null 2>&1; then
    break
  fi
  sleep 1
done
cat <<MSG
Tether's demo is up (project "tether"):
  docker-compose -p tether -f deploy/compose/docker-compose.yml ps
  Jaeger UI:             http://127.0.0.1:16686  (service web)
  web's sidecar metrics: docker exec tether_web_1 ... (admin :15000 inside the pod)
  stop:                  deploy/compose/up.sh --down
MSG
