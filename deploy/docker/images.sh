#!/usr/bin/env bash
# Builds Tether's container images on this machine with no image registry:
#
#   deploy/docker/images.sh            engine up, base images (cached), then
#                                      tether:dev and tether-init:dev from
#                                      deploy/docker/Dockerfile
#   deploy/docker/images.sh --bases    only the engine and the base images
#
# What it makes, each once (kept by the engine; the Debian tree is cached as
# a tarball under $TETHER_CACHE/docker, default ~/.cache/tether/docker):
#   tether-base:bookworm       `debootstrap --variant=minbase bookworm` + `docker import`
#   tether-runtime-base:bookworm  glibc, libm, libgcc_s and /etc/passwd from that
#                              tree, nothing else (no shell): a distroless-style base
#   tether-rust:<version>      tether-base + gcc + the host's Rust toolchain
# and then, from the committed Dockerfile, with those passed as build args:
#   tether:dev                 runtime target (tether-proxy, tether-control, tether-sample)
#   tether-init:dev            init target (tether-proxy + iptables)
# and, for the compose demo, from the binaries deploy/scripts/install-*.sh
# build (cached), on the runtime base:
#   tether-consul:dev          Consul v1.14.11 (MPL-2.0)
#   tether-jaeger:dev          Jaeger v2 with deploy/scripts/jaeger-config.yaml
#
# Starts dockerd if no engine answers (log: $TETHER_CACHE/docker/dockerd.log).
# Uses Debian's docker client (/usr/bin/docker) for builds: its BuildKit is
# built in, while newer clients need the buildx plugin, which Debian does not
# package. Set DOCKER= to use another client.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${TETHER_CACHE:-$HOME/.cache/tether}/docker
DOCKER=${DOCKER:-/usr/bin/docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf '[images.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
mkdir -p "$cache"

ensure_engine() {
  [ -x "$DOCKER" ] || die "$DOCKER not found: apt-get install docker.io"
  if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null || die "dockerd not found: apt-get install docker.io"
  log "starting dockerd (log: $cache/dockerd.log)"
  nohup dockerd >"$cache/dockerd.log" 2>&1 &
  for _ in $(seq 120); do
    "$DOCKER" info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  tail -n 20 "$cache/dockerd.log" >&2
  die "dockerd did not come up within 60 s"
}

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

debian_tree() { # prints the path of the cached minbase tarball
  local tarball=$cache/bookworm-minbase.tar
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
    local work; work=$(mktemp -d "$cache/.debootstrap.XXXXXX")
    log "debootstrap --variant=minbase bookworm (about 2 minutes, once)"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 20 "$cache/debootstrap.log" >&2; rm -rf "$work"; die "debootstrap failed"; }
    tar -C "$work/rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$work"
  fi
  echo "$tarball"
}

base_images() {
  local tarball
  if ! have_image tether-base:bookworm; then
    tarball=$(debian_tree)
    "$DOCKER" import "$tarball" tether-base:bookworm >/dev/null
    log "made tether-base:bookworm"
  fi
  if ! have_image tether-runtime-base:bookworm; then
    tarball=$(debian_tree)
    local work; work=$(mktemp -d)
    local libdir=usr/lib/x86_64-linux-gnu
    tar -C "$work" -xf "$tarball" "./$libdir" ./etc/passwd ./etc/group
    local r=$work/runtime
    mkdir -p "$r/$libdir" "$r/lib64" "$r/etc" "$r/tmp" "$r/usr/local/bin"
    chmod 1777 "$r/tmp"
    for lib in libc.so.6 libm.so.6 libgcc_s.so.1 ld-linux-x86-64.so.2; do
      cp -L "$work/$libdir/$lib" "$r/$libdir/$lib"
    done
    ln -s usr/lib "$r/lib"
    ln -s /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$r/lib64/ld-linux-x86-64.so.2"
    printf 'root:x:0:0:root:/root:/sbin/nologin\ntether:x:1337:1337:tether:/tmp:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' >"$r/etc/passwd"
    printf 'root:x:0:\ntether:x:1337:\nnonroot:x:65532:\n' >"$r/etc/group"
    printf 'hosts: files dns\n' >"$r/etc/nsswitch.conf"
    tar -C "$r" -c . | "$DOCKER" import - tether-runtime-base:bookworm >/dev/null
    rm -rf "$work"
    log "made tether-runtime-base:bookworm"
  fi
  local sysroot version
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  RUST_TAG=tether-rust:$version
  if ! have_image "$RUST_TAG"; then
    local ctx; ctx=$(mktemp -d)
    mkdir -p "$ctx/toolchain"
    cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
    cp "$here/rust-local.Dockerfile" "$ctx/Dockerfile"
    cp -L "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/host-ca-bundle.crt"
    log "making $RUST_TAG from the host toolchain ($sysroot)"
    DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$RUST_TAG" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
}

ensure_engine
base_images
[ "${1:-}" = --bases ] && exit 0

started=$SECONDS
for target in runtime init; do
  tag=tether:dev; [ $target = init ] && tag=tether-init:dev
  log "building $tag (target $target) from deploy/docker/Dockerfile"
  DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain -f "$here/Dockerfile" --target $target \
    --build-arg RUST_IMAGE="$RUST_TAG" \
    --build-arg RUNTIME_IMAGE=tether-runtime-base:bookworm \
    --build-arg INIT_IMAGE=tether-base:bookworm \
    -t $tag "$root" >"$cache/build-$target.log" 2>&1 \
    || { tail -n 40 "$cache/build-$target.log" >&2; die "docker build of $tag failed"; }
done
# Consul and Jaeger: static Go binaries from the install scripts' cache.
third_party_image() { # TAG BINARY [FILE...]: the binary (and files) on the runtime base
  local tag=$1 bin=$2; shift 2
  local ctx; ctx=$(mktemp -d)
  cp "$bin" "$ctx/"
  local copies="COPY $(basename "$bin") /usr/local/bin/"
  for f in "$@"; do cp "$f" "$ctx/"; copies="$copies
COPY $(basename "$f") /etc/tether/"; done
  printf 'FROM tether-runtime-base:bookworm\n%s\nUSER 65532:65532\nENTRYPOINT ["/usr/local/bin/%s"]\n' \
    "$copies" "$(basename "$bin")" >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$tag" "$ctx" >/dev/null || die "docker build of $tag failed"
  rm -rf "$ctx"
}
third_party_image tether-consul:dev "$("$root/deploy/scripts/install-consul.sh")"
third_party_image tether-jaeger:dev "$("$root/deploy/scripts/install-jaeger.sh")" "$root/deploy/scripts/jaeger-config.yaml"

log "images built in $((SECONDS - started)) s:"
"$DOCKER" image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E 'tether(-init|-consul|-jaeger)?:dev' >&2
