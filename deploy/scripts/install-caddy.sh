#!/usr/bin/env bash
# Builds Caddy (Apache-2.0), the L7 peer that does mTLS in the side-by-side
# benchmark (deploy/scripts/bench/run.sh, system `caddy`), from its Go module
# into the cache and prints the binary's absolute path (the only thing on
# stdout). Logs go to stderr.
#
#   deploy/scripts/install-caddy.sh    build once, then just print the path
#
# Pinned: github.com/caddyserver/caddy/v2 v2.11.9, package ./cmd/caddy
#   -> $TETHER_CACHE/caddy-v2.11.9/caddy
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib-install.sh"

CADDY_VERSION=v2.11.9
caddy=$(go_build_module caddy github.com/caddyserver/caddy/v2 "$CADDY_VERSION" cmd/caddy caddy -- version)
echo "$caddy"
