#!/usr/bin/env bash
# Builds HashiCorp Consul from its Go module into the cache and prints the
# binary's path. Pinned: github.com/hashicorp/consul v1.20.2 (main package
# at the module root). Tests start `consul agent -dev` from it.
set -euo pipefail
source "$(dirname "$0")/lib-install.sh"
go_build_module consul github.com/hashicorp/consul v1.20.2 . consul version
