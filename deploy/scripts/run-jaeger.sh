#!/usr/bin/env bash
# Runs Jaeger v2 in the foreground with in-memory storage, everything on loopback:
#   OTLP gRPC         127.0.0.1:${JAEGER_OTLP_GRPC_PORT:-4317}
#   OTLP HTTP         127.0.0.1:${JAEGER_OTLP_HTTP_PORT:-4318}   (POST /v1/traces)
#   query API and UI  http://127.0.0.1:${JAEGER_QUERY_PORT:-16686}
#   query gRPC API    127.0.0.1:${JAEGER_QUERY_GRPC_PORT:-0}     (0 = any free port)
# Nothing else listens, so several can run side by side (the e2e tests do).
# Config: deploy/scripts/jaeger-config.yaml (ports via ${env:...} in it).
# Builds Jaeger first if needed (deploy/scripts/install-jaeger.sh: minutes, once).
# Stop it with SIGTERM/SIGINT; traces live only in memory.
#
# Query API (the same JSON as Jaeger v1's UI API):
#   GET /api/services                     -> {"data": ["web", "api", ...], "total": N, ...}
#   GET /api/traces?service=web&limit=20  -> {"data": [TRACE, ...], ...}, newest first;
#        also &operation=, &lookback=1h, &start=/&end= (µs), &tags={"k":"v"}
#   GET /api/traces/<trace-id hex>        -> {"data": [TRACE]}  (404 when unknown)
#   TRACE = {"traceID", "spans": [{"traceID", "spanID", "operationName",
#            "references": [{"refType": "CHILD_OF", "traceID", "spanID"}],
#            "startTime" (µs), "duration" (µs), "tags": [{"key", "type", "value"}],
#            "logs": [...], "processID", "warnings"}],
#            "processes": {"p1": {"serviceName", "tags": [...]}}, "warnings"}
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
jaeger=$("$here/install-jaeger.sh")
export JAEGER_OTLP_GRPC_PORT=${JAEGER_OTLP_GRPC_PORT:-4317}
export JAEGER_OTLP_HTTP_PORT=${JAEGER_OTLP_HTTP_PORT:-4318}
export JAEGER_QUERY_PORT=${JAEGER_QUERY_PORT:-16686}
export JAEGER_QUERY_GRPC_PORT=${JAEGER_QUERY_GRPC_PORT:-0}
exec "$jaeger" --config "$here/jaeger-config.yaml"
