#!/usr/bin/env bash
# Runs Jaeger all-in-one in the foreground, in-memory storage, on loopback:
#   OTLP gRPC  127.0.0.1:${JAEGER_OTLP_GRPC_PORT:-4317}
#   OTLP HTTP  127.0.0.1:${JAEGER_OTLP_HTTP_PORT:-4318}
#   query API and UI  http://127.0.0.1:${JAEGER_QUERY_PORT:-16686}
# Every other listener (admin, Jaeger-native collector, query gRPC) takes a
# free port, so several can run side by side (the e2e tests do).
# Builds Jaeger first if needed (deploy/scripts/install-jaeger.sh).
#
# Query API used by the tests and worth knowing:
#   GET /api/services                 -> {"data": ["web", "api", ...]}
#   GET /api/traces/<trace-id>        -> {"data": [{"traceID", "spans": [{"spanID", "operationName",
#        "references": [{"refType": "CHILD_OF", "spanID"}], "tags": [{"key", "value"}],
#        "logs": [...], "processID"}], "processes": {"p1": {"serviceName"}}}]}
#   GET /api/traces?service=web&limit=20  -> the same shape, newest traces of a service
set -euo pipefail
jaeger=$("$(dirname "$0")/install-jaeger.sh")
exec "$jaeger" \
  --memory.max-traces=100000 \
  --collector.otlp.enabled=true \
  --collector.otlp.grpc.host-port="127.0.0.1:${JAEGER_OTLP_GRPC_PORT:-4317}" \
  --collector.otlp.http.host-port="127.0.0.1:${JAEGER_OTLP_HTTP_PORT:-4318}" \
  --query.http-server.host-port="127.0.0.1:${JAEGER_QUERY_PORT:-16686}" \
  --query.grpc-server.host-port=127.0.0.1:0 \
  --collector.grpc-server.host-port=127.0.0.1:0 \
  --collector.http-server.host-port=127.0.0.1:0 \
  --admin.http.host-port=127.0.0.1:0
