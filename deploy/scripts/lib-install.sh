# Shared by the install-*.sh scripts (sourced). Builds a Go program from its
# module on the Go module proxy into a cache, once:
#   $TETHER_CACHE (default ~/.cache/tether)/<name>-<version>/<binary>
# Logs go to stderr; the scripts print only the binary's path on stdout.

cache_root=${TETHER_CACHE:-$HOME/.cache/tether}
log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

# go_build_module NAME MODULE VERSION PACKAGE BINARY [VERIFY-ARGS...]
# `go install MODULE/PACKAGE@VERSION` refuses modules whose go.mod has
# replace directives (Consul's and Jaeger's point at their nested modules).
# So: download the module, copy it somewhere writable, drop the replaces
# that point at local paths (the published versions the go.mod requires are
# used instead), and build there.
go_build_module() {
  local name=$1 module=$2 version=$3 package=$4 binary=$5; shift 5
  local dir="$cache_root/$name-$version" out
  out="$dir/$binary"
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9
  if [ -x "$out" ] && "$out" "$@" >/dev/null 2>&1; then
    echo "$out"
    return 0
  fi
  command -v go >/dev/null || { log "go is required (install Go 1.22+)"; return 1; }
  local started src build
  started=$(date +%s)
  log "building $module@$version ($package) — a few minutes the first time"
  src=$(GOFLAGS=-mod=mod go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  build=$(mktemp -d)
  cp -R "$src/." "$build/"
  chmod -R u+w "$build"
  (
    cd "$build"
    python3 - <<'PY' | while read -r path; do go mod edit -dropreplace="$path"; done
import json, subprocess
mod = json.loads(subprocess.check_output(["go", "mod", "edit", "-json"]))
for r in mod.get("Replace") or []:
    if r["New"]["Path"].startswith((".", "/")):
        print(r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else ""))
PY
    GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go build -trimpath -o "$out.tmp" "./$package" >&2
  )
  rm -rf "$build"
  mv "$out.tmp" "$out"
  log "built $out in $(( $(date +%s) - started ))s"
  echo "$out"
}
