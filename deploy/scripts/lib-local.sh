# Shared by the scripts that run a mesh of local processes
# (deploy/scripts/quickstart.sh, examples/rollout/run.sh); sourced from
# the repository root, never run.
#
# Builds the binaries (TETHER_PROFILE=release, the default, or debug, which
# reuses what `cargo test` built) into $bin, makes a work directory $work,
# and stops every process started with `start` (and removes $work) on exit.

profile=${TETHER_PROFILE:-release}
echo "==> building ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --quiet -p tether-proxy -p tether-control -p tether-examples
  bin=target/release
else
  cargo build --quiet -p tether-proxy -p tether-control -p tether-examples
  bin=target/debug
fi
work=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo "==> stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
# start NAME CMD...: runs CMD in the background, its output in $work/NAME.log;
# its pid in $last.
start() { local name=$1; shift; "$@" >>"$work/$name.log" 2>&1 & pids+=($!); last=$!; }
# wait_http URL: polls until URL answers 2xx (20 s at most), else shows the logs and exits.
wait_http() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done; echo "$1 never answered"; tail -n 20 "$work"/*.log; exit 1; }
