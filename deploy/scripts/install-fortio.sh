#!/usr/bin/env bash
# Builds fortio (open-loop load generator with latency histograms) into the
# cache and prints the binary's path. Pinned: fortio.org/fortio v1.65.0 —
# later versions need grol.io/grol, which the Go module proxy here refuses.
set -euo pipefail
source "$(dirname "$0")/lib-install.sh"
go_build_module fortio fortio.org/fortio v1.65.0 . fortio version
