#!/usr/bin/env bash
# Builds HashiCorp Consul from its Go module into the cache and prints the
# binary's absolute path (the only thing on stdout). Logs go to stderr.
#
#   deploy/scripts/install-consul.sh           build once, then just print the path
#   deploy/scripts/install-consul.sh --check   also smoke-test it: a dev agent on
#                                              loopback ports until it has a leader,
#                                              and `consul connect proxy -h`
#
# Pinned: github.com/hashicorp/consul v1.14.11 (main package at the module root)
#   -> $TETHER_CACHE/consul-v1.14.11/consul   (TETHER_CACHE defaults to ~/.cache/tether)
#
# Why this version: licence. HashiCorp moved Consul to the Business Source
# License (BUSL-1.1, not an open-source licence) from v1.17 on, and the newer
# releases also pull nested modules (envoyextensions, troubleshoot) under that
# licence. Tether builds, runs and ships only open-source parts, so it pins the
# last MPL-2.0 release line that builds here with nothing but published nested
# modules: v1.14.11 needs only api, sdk and proto-public. The script checks the
# LICENSE of the downloaded module before building and refuses anything that
# is not MPL-2.0 (set CONSUL_VERSION to try another release; it gets the same
# check). Everything Tether uses (catalog and health endpoints with blocking
# queries, the agent service endpoints, -dev agents) is in v1.14.
#
# `go install github.com/hashicorp/consul@v1.14.11` is refused: its go.mod
# replaces its nested modules with ./dirs that are not in the module zip.
# lib-install.sh drops those replaces so the published versions the go.mod
# requires are used, and builds a copy of the module with -mod=mod.
#
# Build time here: see README (CI section). A run with
# the binary cached: ~0.2 s (it only runs `consul version`).
#
# Dev agent on custom loopback ports (several can run side by side, each with
# its own ports; -dev keeps all data in memory):
#   consul agent -dev -bind=127.0.0.1 -client=127.0.0.1 -http-port=18500 \
#     -dns-port=-1 -grpc-port=-1 -grpc-tls-port=-1 -serf-lan-port=18301 \
#     -serf-wan-port=18302 -server-port=18300
#   then poll GET http://127.0.0.1:18500/v1/status/leader until it returns a
#   non-empty string such as "127.0.0.1:18300".
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib-install.sh"

CONSUL_VERSION=${CONSUL_VERSION:-v1.14.11}

# The licence of the module source, checked before anything is built: only
# MPL-2.0 (the text of Mozilla Public License Version 2.0 with no BUSL terms).
check_consul_licence() {
  need_go
  local json dir
  json=$(go mod download -json "github.com/hashicorp/consul@$CONSUL_VERSION") \
    || die "go mod download github.com/hashicorp/consul@$CONSUL_VERSION failed: $json"
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$dir/LICENSE" ] || die "no LICENSE in the Consul module at $dir"
  if grep -q 'Business Source License' "$dir/LICENSE"; then
    die "Consul $CONSUL_VERSION is under the Business Source License, not open source; use v1.14.11 (MPL-2.0)"
  fi
  grep -qiE 'Mozilla Public License,? [Vv]ersion 2\.0' "$dir/LICENSE" \
    || die "Consul $CONSUL_VERSION: LICENSE is not the MPL-2.0 text"
}
if ! binary_runs "$TETHER_CACHE/consul-$CONSUL_VERSION/consul" version; then
  check_consul_licence
fi

consul=$(go_build_module consul github.com/hashicorp/consul "$CONSUL_VERSION" . consul -- version)

if [ "${1:-}" = --check ]; then
  "$consul" version >&2
  "$consul" connect proxy -h >/dev/null 2>&1 || die "consul connect proxy -h failed"
  http=${CONSUL_HTTP_PORT:-18500}
  data=$(mktemp -d)
  pid=
  cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$data"; }
  trap cleanup EXIT; trap 'exit 143' INT TERM
  "$consul" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -http-port="$http" \
    -dns-port=-1 -grpc-port=-1 -grpc-tls-port=-1 \
    -serf-lan-port="${CONSUL_SERF_LAN_PORT:-18301}" -serf-wan-port="${CONSUL_SERF_WAN_PORT:-18302}" \
    -server-port="${CONSUL_SERVER_PORT:-18300}" >"$data/agent.log" 2>&1 &
  pid=$!
  leader=
  for _ in $(seq 120); do  # 60 s at most
    leader=$(curl -fsS -m 2 "http://127.0.0.1:$http/v1/status/leader" 2>/dev/null || true)
    [ -n "$leader" ] && [ "$leader" != '""' ] && break
    kill -0 "$pid" 2>/dev/null || break
    leader=
    sleep 0.5
  done
  [ -n "$leader" ] || { tail -n 30 "$data/agent.log" >&2; die "the dev agent never elected a leader"; }
  log "check passed: dev agent on 127.0.0.1:$http has leader $leader; connect proxy present"
fi
echo "$consul"
