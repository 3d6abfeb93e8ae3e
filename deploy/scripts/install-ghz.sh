#!/usr/bin/env bash
# Builds ghz (gRPC load generator: fixed-rate or max-throughput unary calls,
# latency percentiles, JSON report) from its Go module into the cache and
# prints the binary's absolute path (the only thing on stdout).
#
#   deploy/scripts/install-ghz.sh     build once, then just print the path
#
# Pinned: github.com/bojand/ghz v0.120.0 (Apache-2.0) -> $TETHER_CACHE/ghz-v0.120.0/ghz
# Its go.mod has no replace directives: a plain `go install .../cmd/ghz@v0.120.0`.
# The Go module proxy lists only v0.93.0 as "latest" (later tags came after
# a module path hiccup), but v0.120.0, the last release, resolves by name.
#
# Usage (deploy/scripts/bench/grpc.sh): ghz --insecure --proto FILE --call
#   pkg.Service/Method -d '{"field":"value"}' --rps 1000 -z 10s -c 16 HOST:PORT
# Like fortio, ghz paces a closed loop per worker and times each call from
# when it was sent: percentiles are not corrected for coordinated omission.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib-install.sh"

ghz=$(go_build_module ghz github.com/bojand/ghz v0.120.0 cmd/ghz ghz -- --version)
echo "$ghz"
