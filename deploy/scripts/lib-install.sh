# Shared helpers for deploy/scripts/install-*.sh (sourced, never run).
#
# Builds a Go program from its module on the Go module proxy, once, into
#   $TETHER_CACHE/<name>-<version>/<binary>      (TETHER_CACHE defaults to ~/.cache/tether)
# and prints that absolute path on stdout. Everything else goes to stderr.
# A run with the binary already built only checks that it runs (well under 1 s).
# Concurrent runs serialise on a flock in the cache; the binary is moved into
# place only after it has been built and has run, so nobody sees half of it.
# GOPATH, GOMODCACHE and GOCACHE stay at Go's defaults, so modules and compiled
# packages are shared between builds on this machine.

TETHER_CACHE=${TETHER_CACHE:-$HOME/.cache/tether}

log() { printf '[%s] %s\n' "$(basename "${0:-install}")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Go itself: PATH first, then the usual install location.
need_go() {
  if ! command -v go >/dev/null 2>&1; then
    [ -x /usr/local/go/bin/go ] && PATH=$PATH:/usr/local/go/bin
  fi
  command -v go >/dev/null 2>&1 || die "go is required (1.25 or newer; /usr/local/go/bin is searched too)"
}

# binary_runs BINARY ARGS...: the binary exists and `BINARY ARGS...` succeeds
# within 20 s (output discarded).
binary_runs() {
  local bin=$1; shift
  [ -x "$bin" ] && timeout 20 "$bin" "$@" </dev/null >/dev/null 2>&1
}

# local_replaces GOMOD: the left-hand sides ("path" or "path@version") of the
# replace directives in GOMOD that point at a directory (./x, ../x, /x).
local_replaces() {
  awk '
    /^replace[ \t]*\(/ { block = 1; next }
    block && /^\)/     { block = 0; next }
    /^replace[ \t]/ || block {
      line = $0; sub(/\/\/.*/, "", line); sub(/^replace[ \t]+/, "", line)
      split(line, side, "=>")
      if (side[2] !~ /^[ \t]*(\.\.?\/|\/)/) next
      n = split(side[1], old, /[ \t]+/); path = ""; ver = ""
      for (i = 1; i <= n; i++) if (old[i] != "") { if (path == "") path = old[i]; else ver = old[i] }
      print (ver == "" ? path : path "@" ver)
    }' "$1"
}

# go_build_module NAME MODULE VERSION PACKAGE BINARY [-- VERIFY-ARGS...]
#   NAME     cache directory prefix (consul, jaeger, ...)
#   PACKAGE  main package inside the module, "." for the module root
#   BINARY   file name in $TETHER_CACHE/NAME-VERSION/
#   GO_BUILD_UPGRADES (variable, optional): "module@version ..." to `go get`
#            in the module copy before building (Consul v1.22.7 needs a newer
#            published consul/api than its go.mod requires).
#   VERIFY-ARGS  arguments the binary must accept (default: version)
# Prints the absolute path of the binary on stdout.
#
# Modules with a go.mod without replace directives are built with
# `go install MODULE/PKG@VERSION`. A module without go.mod (from before Go
# modules) is built like the next case, after `go mod init`, so
# GO_BUILD_UPGRADES can pin its dependencies.
# `go install` refuses modules whose go.mod has replace directives (Consul's
# and Jaeger's), so those are downloaded, copied to a writable directory, the
# replaces that point at local directories (nested modules of the same repo)
# are dropped so the published versions the go.mod requires are used, and the
# package is built there with -mod=mod. Other replaces are kept.
go_build_module() {
  local name=$1 module=$2 version=$3 package=$4 binary=$5; shift 5
  [ "${1:-}" = -- ] && shift
  local verify=("$@"); [ ${#verify[@]} -gt 0 ] || verify=(version)
  local dir="$TETHER_CACHE/$name-$version"
  local out="$dir/$binary"

  if binary_runs "$out" "${verify[@]}"; then echo "$out"; return 0; fi

  mkdir -p "$dir"
  local lock_fd
  exec {lock_fd}>"$dir/.lock"
  if ! flock -n "$lock_fd"; then
    log "another build of $name $version is running; waiting for it (up to 1 h)"
    flock -w 3600 "$lock_fd" || die "timed out waiting for the lock $dir/.lock"
  fi
  # Someone else may have built it while we waited.
  if binary_runs "$out" "${verify[@]}"; then exec {lock_fd}>&-; echo "$out"; return 0; fi
  # A binary from an older layout ($dir/bin/<binary>): move it here.
  if [ -f "$dir/bin/$binary" ] && binary_runs "$dir/bin/$binary" "${verify[@]}"; then
    rm -f "$out"; mv -f "$dir/bin/$binary" "$out"; rmdir "$dir/bin" 2>/dev/null || true
    exec {lock_fd}>&-
    echo "$out"; return 0
  fi

  need_go
  local started=$SECONDS
  log "building $module@$version ($package) into $out; this takes minutes the first time"
  # errexit is ignored inside a subshell on the left of ||, so every step
  # that can fail below checks for failure itself.
  (
    set -euo pipefail
    # We hold the lock: any build directory left here is from a killed build.
    for stale in "$dir"/.build.*; do
      [ -e "$stale" ] && { chmod -R u+w "$stale"; rm -rf "$stale"; }
    done
    work=$(mktemp -d "$dir/.build.XXXXXX")
    trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
    json=$(go mod download -json "$module@$version") || die "go mod download $module@$version failed: $json"
    src=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [ -n "$src" ] && [ -d "$src" ] || die "no module directory for $module@$version in: $json"

    ldflags="-s -w ${GO_BUILD_LDFLAGS:-}"
    if [ -f "$src/go.mod" ] && ! grep -Eq '^[[:space:]]*replace([[:space:]]|\()' "$src/go.mod"; then
      pkg=$module; [ "$package" = . ] || pkg=$module/${package#./}
      mkdir "$work/gobin"
      GOBIN=$work/gobin CGO_ENABLED=0 nice -n 10 \
        go install -trimpath -ldflags="$ldflags" "$pkg@$version" >&2 || die "go install $pkg@$version failed"
      mv "$work/gobin/"* "$work/$binary.new" || exit 1
    else
      cp -R "$src/." "$work/src" || exit 1
      chmod -R u+w "$work/src" || exit 1
      cd "$work/src" || exit 1
      # A module from before Go modules (h2spec) gets a go.mod here; its
      # dependencies come from GO_BUILD_UPGRADES and what the build imports.
      [ -f go.mod ] || go mod init "$module" >&2 || exit 1
      for old in $(local_replaces go.mod); do
        log "dropping replace $old (using the published version go.mod requires)"
        go mod edit -dropreplace="$old" || exit 1
      done
      for up in ${GO_BUILD_UPGRADES:-}; do
        log "go get $up"
        GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" go get "$up" >&2 || die "go get $up failed"
      done
      # -mod=mod: go.sum lacks the nested modules (they were replaced); fetch
      # and verify them against the checksum database now.
      GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" CGO_ENABLED=0 nice -n 10 \
        go build -trimpath -ldflags="$ldflags" -o "$work/$binary.new" "./${package#./}" >&2 || die "go build of $module@$version failed"
    fi
    binary_runs "$work/$binary.new" "${verify[@]}" \
      || die "the freshly built $binary does not run: $work/$binary.new ${verify[*]}"
    rm -f "$out"; mv -f "$work/$binary.new" "$out" || exit 1
  ) || { exec {lock_fd}>&-; return 1; }
  exec {lock_fd}>&-
  log "built $out in $((SECONDS - started)) s"
  echo "$out"
}
