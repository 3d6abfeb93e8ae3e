#!/usr/bin/env bash
# Builds HashiCorp Consul from its Go module into the cache and prints the
# binary's absolute path (the only thing on stdout). Logs go to stderr.
#
#   deploy/scripts/install-consul.sh           build once, then just print the path
#   deploy/scripts/install-consul.sh --check   also smoke-test it: a dev agent on
#                                              loopback ports until it has a leader,
#                                              and `consul connect proxy -h`
#
# Pinned: github.com/hashicorp/consul v1.22.5 (main package at the module root)
#   -> $TETHER_CACHE/consul-v1.22.5/bin/consul   (TETHER_CACHE defaults to ~/.cache/tether)
#
# `go install github.com/hashicorp/consul@v1.22.5` is refused: its go.mod
# replaces its nested modules (api, sdk, proto-public, envoyextensions,
# troubleshoot) with ./dirs that are not in the module zip. lib-install.sh drops
# those replaces so the published versions the go.mod requires are used (here
# api v1.33.2, sdk v0.17.1, proto-public v0.7.1, envoyextensions v0.9.2,
# troubleshoot v0.8.3) and builds a copy of the module with -mod=mod.
#
# Why this version (checked 2026-11-23 against the Go module proxy used here;
# the proxy serves nothing newer than v1.22.7):
# - v1.22.7 does not compile against the api version its go.mod names (v1.33.7):
#   its ACL commands use ACLToken.Name and ACLAuthMethod.TokenNameFormat, which
#   only the api v1.34.x line publishes; building it would mean guessing an api
#   version the release never shipped with.
# - v1.22.6, v1.22.0-v1.22.2 and v1.21.5 require nested-module versions the
#   checksum database does not know (e.g. envoyextensions v0.9.4, proto-public
#   v0.7.2, troubleshoot v0.8.5), which `go` refuses to use.
# - v1.22.5 builds as released: every nested module it requires is published
#   and in the checksum database, and no other change is needed.
#
# Build time here (2 cores, nice 10, other builds running, 2026-11-23): 288 s
# with an empty Go build cache (modules already downloaded; a fresh machine also
# downloads ~0.5 GB of modules first); 158 s with a partly warm one. A run with
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

consul=$(go_build_module consul github.com/hashicorp/consul v1.22.5 . consul -- version)

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
