#!/usr/bin/env bash
# Builds the Prometheus server from its Go module into the cache and prints
# the binary's absolute path (the only thing on stdout).
#
#   deploy/scripts/install-prometheus.sh
#
# Why not Debian's `prometheus` package (which CI installs for promtool):
# Debian builds it without several service-discovery plugins, Consul's
# among them (`field consul_sd_configs not found`), and finding sidecars
# through Consul is what deploy/prometheus/prometheus.yml does. The module is
# Apache-2.0 (checked below). Its Go module versions are v0.MAJORMINOR.PATCH
# of Prometheus MAJOR.MINOR.PATCH: v0.316.0 is Prometheus 3.16.0. The web
# UI's assets are not embedded (they are built by npm in Prometheus's own
# release process): the HTTP API, scraping, rules and discovery all work.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib-install.sh"

PROMETHEUS_VERSION=v0.316.0
need_go
licence=$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')/LICENSE
grep -q "Apache License" "$licence" || die "github.com/prometheus/prometheus@$PROMETHEUS_VERSION: $licence is not the Apache License"
# Prometheus's build tags leave out every service-discovery plugin but
# Consul's (and file/static, always in): no Kubernetes, AWS, Azure or GCP
# SDKs to compile, which more than halves the build.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-tags=remove_all_sd,enable_consul_sd"
go_build_module prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION" cmd/prometheus prometheus -- --version
