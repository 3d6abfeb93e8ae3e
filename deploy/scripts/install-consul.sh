#!/usr/bin/env bash
# Builds HashiCorp Consul from its Go module into the cache and prints the
# binary's path. Pinned: github.com/hashicorp/consul v1.14.11 (main package
# at the module root). Tests start `consul agent -dev` from it.
#
# Why 1.14: from 1.15 on, Consul's go.mod requires its nested modules
# `envoyextensions` and `troubleshoot` at versions the Go module proxy does
# not serve (checked 2026-11-22: v1.20.2 needs envoyextensions v0.7.7, which
# 404s), so newer releases cannot be built from the proxy alone. 1.14.11
# needs only api v1.18.1, sdk v0.13.0 and proto-public v0.2.1, all served.
# The catalog, health and blocking-query APIs Tether uses are the same.
# Cold build here (2 cores, 2026-11-22): 385 s; cached: well under 1 s.
set -euo pipefail
source "$(dirname "$0")/lib-install.sh"
go_build_module consul github.com/hashicorp/consul v1.14.11 . consul version
