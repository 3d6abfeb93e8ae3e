#!/usr/bin/env bash
# Builds Jaeger all-in-one (v1 line; in-memory storage, OTLP in, query API)
# from its Go module into the cache and prints the binary's path.
# Pinned: github.com/jaegertracing/jaeger v1.76.0, package ./cmd/all-in-one.
# Run it with deploy/scripts/run-jaeger.sh.
# Cold build here (2 cores, 2026-11-22): 159 s; cached: well under 1 s.
set -euo pipefail
source "$(dirname "$0")/lib-install.sh"
go_build_module jaeger github.com/jaegertracing/jaeger v1.76.0 cmd/all-in-one jaeger-all-in-one version
