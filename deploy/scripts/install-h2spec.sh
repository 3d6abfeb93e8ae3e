#!/usr/bin/env bash
# Builds h2spec, the HTTP/2 conformance tester, from its Go module into the
# cache and prints the binary's absolute path (the only thing on stdout).
# Logs go to stderr. tests/tests/h2spec.rs runs it against the proxy.
#
#   deploy/scripts/install-h2spec.sh           build once, then just print the path
#   deploy/scripts/install-h2spec.sh --check   also list its 145 test cases
#
# Pinned: github.com/summerwind/h2spec v2.2.1+incompatible, package ./cmd/h2spec
#   -> $TETHER_CACHE/h2spec-v2.2.1+incompatible/h2spec
# The newest h2spec the Go module proxy serves: later releases (up to 2.6.0)
# added a go.mod without the /v2 suffix their tags need, so Go cannot see
# them. This release has no go.mod at all (it used dep), so lib-install.sh
# creates one and the dependencies are pinned below (the versions this was
# first built and checked with) instead of whatever is newest. Its generic,
# HTTP/2 and HPACK groups hold 145 cases (`h2spec --dryrun`).
# The binary reports "Version: 2.2.1 (v2.2.1)": set at link time, as the
# project's own Makefile does.
#
# Build time here (2 cores, other builds running, 2026-11-30): ~3 min with
# an empty Go build cache. Cached: ~0.1 s.
#
# Rerun by hand against a proxy's outbound listener:
#   $(deploy/scripts/install-h2spec.sh) -h 127.0.0.1 -p 15001
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib-install.sh"

H2SPEC_VERSION=v2.2.1+incompatible
GO_BUILD_UPGRADES="github.com/spf13/cobra@v1.10.2 github.com/spf13/pflag@v1.0.9 github.com/fatih/color@v1.19.0 golang.org/x/net@v0.62.0"
GO_BUILD_LDFLAGS="-X main.VERSION=2.2.1 -X main.COMMIT=v2.2.1"

h2spec=$(go_build_module h2spec github.com/summerwind/h2spec "$H2SPEC_VERSION" cmd/h2spec h2spec -- --version)

if [ "${1:-}" = --check ]; then
  "$h2spec" --version >&2
  cases=$("$h2spec" --dryrun | grep -cE '^[[:space:]]+[0-9]+:')
  [ "$cases" = 145 ] || die "h2spec lists $cases test cases, expected 145"
  log "check passed: h2spec lists $cases test cases"
fi
echo "$h2spec"
