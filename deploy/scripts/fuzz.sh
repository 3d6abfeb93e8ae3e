#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after another, each for a bounded
# time, and exits non-zero if any of them crashed (panic, failed assertion,
# timeout or out-of-memory). See docs/fuzzing.md for what each target covers.
#
#   deploy/scripts/fuzz.sh                 every target, 60 s each
#   deploy/scripts/fuzz.sh route authz     only these
#   FUZZ_SECONDS=600 deploy/scripts/fuzz.sh
#
# Settings (environment):
#   FUZZ_SECONDS        run time per target (-max_total_time), default 60
#   FUZZ_RSS_MB         memory cap per target (-rss_limit_mb), default 2048
#   FUZZ_INPUT_TIMEOUT  seconds one input may take before it counts as a hang
#                       (-timeout), default 10
#   FUZZ_JOBS           libFuzzer -jobs (default 1: one process, no forks;
#                       the machine is shared, so targets never run side by side)
#   FUZZ_CORPUS_MAX     above this many files a target's corpus is minimized
#                       with `cargo fuzz cmin` after its run, default 300; the
#                       minimized corpus keeps one input per covered edge
#                       (-use_counters=0: with hit counts it keeps thousands)
#   FUZZ_SANITIZER      cargo-fuzz --sanitizer, default none: the crates forbid
#                       unsafe code, so AddressSanitizer buys little and costs
#                       ~2x build and run time; `address` to turn it on
#
# Builds use nightly (`cargo +nightly fuzz`), release mode with debug
# assertions (-a) so integer overflow panics instead of wrapping.
# The corpus is fuzz/corpus/<target>/ (committed; new interesting inputs are
# added to it, and cmin renames files to their hashes); hand-written seeds
# (valid inputs, past crashes) are fuzz/seeds/<target>/, read on every run
# and never rewritten. Crashes land in
# fuzz/artifacts/<target>/ (not committed): reproduce one with
#   cargo +nightly fuzz run -s none -a <target> fuzz/artifacts/<target>/crash-…
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo/fuzz"

seconds=${FUZZ_SECONDS:-60}
rss_mb=${FUZZ_RSS_MB:-2048}
input_timeout=${FUZZ_INPUT_TIMEOUT:-10}
jobs=${FUZZ_JOBS:-1}
corpus_max=${FUZZ_CORPUS_MAX:-300}
sanitizer=${FUZZ_SANITIZER:-none}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: cargo-fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

build_flags=(--sanitizer "$sanitizer" --debug-assertions)
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# All targets at once (they share every dependency); the runs below find
# them built.
if ! cargo +nightly fuzz build "${build_flags[@]}"; then
  echo "fuzz.sh: the fuzz targets do not build" >&2
  exit 2
fi

libfuzzer_flags=(
  "-max_total_time=$seconds"
  "-rss_limit_mb=$rss_mb"
  "-timeout=$input_timeout"
  -print_final_stats=1
)
if [ "$jobs" -gt 1 ]; then
  libfuzzer_flags+=("-jobs=$jobs" "-workers=$jobs")
fi

failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "seeds/$target"
  dict=()
  if [ -f "dict/$target.dict" ]; then
    dict=("-dict=dict/$target.dict")
  fi
  echo "fuzz.sh: $target for ${seconds}s (corpus: $(find "corpus/$target" -type f | wc -l) files)" >&2
  if cargo +nightly fuzz run "${build_flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    "${libfuzzer_flags[@]}" "${dict[@]}"; then
    echo "fuzz.sh: $target: no crash" >&2
  else
    echo "fuzz.sh: $target: CRASHED; inputs in fuzz/artifacts/$target/" >&2
    failed+=("$target")
  fi
  files=$(find "corpus/$target" -type f | wc -l)
  if [ "$files" -gt "$corpus_max" ]; then
    echo "fuzz.sh: $target: corpus has $files files, minimizing" >&2
    cargo +nightly fuzz cmin "${build_flags[@]}" "$target" "corpus/$target" -- \
      "-rss_limit_mb=$rss_mb" "-timeout=$input_timeout" -use_counters=0 >/dev/null 2>&1 ||
      echo "fuzz.sh: $target: cmin failed; corpus left as is" >&2
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: crashed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash" >&2
