#!/usr/bin/env bash
# Builds Jaeger v2 (cmd/jaeger: in-memory storage, OTLP in, query API + UI)
# from its Go module into the cache and prints the binary's absolute path (the
# only thing on stdout). Run it with deploy/scripts/run-jaeger.sh.
#
#   deploy/scripts/install-jaeger.sh           build once, then just print the path
#   deploy/scripts/install-jaeger.sh --check   also smoke-test it: start it through
#       run-jaeger.sh on 127.0.0.1 (ports below), wait for /api/services, post one
#       OTLP/HTTP span and read it back from /api/traces?service=tether-check
#
# Pinned: github.com/jaegertracing/jaeger v1.76.0, package ./cmd/jaeger
#   -> $TETHER_CACHE/jaeger-v1.76.0/bin/jaeger
# The Go module carries the v1 tag; this release is Jaeger v2.13.0 (the project
# tags both; Go can only see the v1.x tags since the module path has no /v2).
# It is the newest version the Go module proxy here serves. The same module
# also has the v1 all-in-one (./cmd/all-in-one), but Jaeger v1 reached end of
# life at the end of 2025, so we run v2. Its go.mod has one replace (sarama =>
# a published version), which makes `go install` refuse it; lib-install.sh
# builds a copy of the module instead, keeping that replace.
# The UI is the placeholder embedded in the module source (the real assets are
# built by npm in Jaeger's own release process); the query API is complete.
#
# Build time here (2 cores, nice 10, other builds running, 2026-11-23): 223 s
# with an empty Go build cache (modules already downloaded). Cached: ~0.1 s.
#
# The exact command line run-jaeger.sh runs (and --check uses, with ports
# 24317/24318/26686 so it does not collide with a Jaeger on the defaults):
#   JAEGER_OTLP_GRPC_PORT=4317 JAEGER_OTLP_HTTP_PORT=4318 JAEGER_QUERY_PORT=16686 \
#     $TETHER_CACHE/jaeger-v1.76.0/bin/jaeger --config <repo>/deploy/scripts/jaeger-config.yaml
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib-install.sh"

GO_BUILD_LDFLAGS="-X github.com/jaegertracing/jaeger/internal/version.latestVersion=v2.13.0" \
  jaeger=$(go_build_module jaeger github.com/jaegertracing/jaeger v1.76.0 cmd/jaeger jaeger -- version)

if [ "${1:-}" = --check ]; then
  export JAEGER_OTLP_GRPC_PORT=${JAEGER_OTLP_GRPC_PORT:-24317}
  export JAEGER_OTLP_HTTP_PORT=${JAEGER_OTLP_HTTP_PORT:-24318}
  export JAEGER_QUERY_PORT=${JAEGER_QUERY_PORT:-26686}
  log "$("$jaeger" version 2>&1 | tr -s ' \n' ' ')"
  query=http://127.0.0.1:$JAEGER_QUERY_PORT
  work=$(mktemp -d)
  pid=
  cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$work"; }
  trap cleanup EXIT; trap 'exit 143' INT TERM
  "$here/run-jaeger.sh" >"$work/jaeger.log" 2>&1 &
  pid=$!
  up=false
  for _ in $(seq 120); do  # 60 s at most
    curl -fsS -m 2 "$query/api/services" 2>/dev/null | grep -q '"data"' && { up=true; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  $up || { tail -n 30 "$work/jaeger.log" >&2; die "Jaeger's query API never answered on $query"; }
  now=$(date +%s%N)
  curl -fsS -m 5 -o /dev/null -H 'Content-Type: application/json' \
    "http://127.0.0.1:$JAEGER_OTLP_HTTP_PORT/v1/traces" -d '{"resourceSpans":[{
      "resource":{"attributes":[{"key":"service.name","value":{"stringValue":"tether-check"}}]},
      "scopeSpans":[{"scope":{"name":"check"},"spans":[{
        "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "name":"GET /","kind":2,"startTimeUnixNano":"'$((now - 2000000))'","endTimeUnixNano":"'$now'",
        "attributes":[{"key":"http.request.method","value":{"stringValue":"GET"}}]}]}]}]}' \
    || die "OTLP/HTTP export to 127.0.0.1:$JAEGER_OTLP_HTTP_PORT failed"
  found=false
  for _ in $(seq 40); do  # 20 s at most
    curl -fsS -m 2 "$query/api/traces?service=tether-check&limit=5" 2>/dev/null >"$work/traces.json" \
      && grep -q 5b8efff798038103d269b633813fc60c "$work/traces.json" && { found=true; break; }
    sleep 0.5
  done
  $found || { cat "$work/traces.json" >&2 2>/dev/null; tail -n 30 "$work/jaeger.log" >&2; die "the span never showed up in /api/traces"; }
  log "check passed: query API on $query, OTLP gRPC :$JAEGER_OTLP_GRPC_PORT, OTLP HTTP :$JAEGER_OTLP_HTTP_PORT; span read back"
  [ -z "${JAEGER_CHECK_SHOW:-}" ] || cat "$work/traces.json" >&2
fi
echo "$jaeger"
