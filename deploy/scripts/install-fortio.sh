#!/usr/bin/env bash
# Builds fortio (open-loop load generator with latency histograms) into the
# cache and prints the binary's path. Pinned: fortio.org/fortio v1.65.0 —
# later versions need grol.io/grol, which the Go module proxy here refuses.
# Cold build here (2 cores, 2026-11-22): 12 s with modules cached; then well under 1 s.
set -euo pipefail
source "$(dirname "$0")/lib-install.sh"
go_build_module fortio fortio.org/fortio v1.65.0 . fortio version
