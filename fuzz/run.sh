#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of fuzz/ on the stable toolchain (no
# cargo-fuzz, no nightly): SanitizerCoverage is added by rustc-wrapper.sh to
# the project's crates and the parsers they use; everything else is plain.
#
#   fuzz/run.sh build                      build every target
#   fuzz/run.sh smoke [SECONDS]            each target SECONDS (default 15) on its
#                                          corpus; non-zero on any crash
#   fuzz/run.sh long TARGET BUDGET [ARGS]  one target, single process: BUDGET is
#                                          `10000000` (runs) or `3600s` (seconds);
#                                          new inputs go to the corpus, ARGS to libFuzzer
#   fuzz/run.sh merge TARGET               minimise TARGET's corpus in place (every
#                                          edge kept, fewest inputs)
#   fuzz/run.sh repro TARGET FILE…         run the target on the given inputs
#   fuzz/run.sh minimize TARGET CRASH      minimise a crashing input
#   fuzz/run.sh list                       the targets
#
# Artifacts (crashes, timeouts, OOMs) go to fuzz/artifacts/<target>/, logs to
# fuzz/logs/ (both git-ignored). FUZZ_JOBS sets cargo's -j for the build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
caller=$PWD
cd "$here"
# A path given on the command line, as seen from where run.sh was called.
from_caller() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
unset RUST_BACKTRACE

triple="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$here/target"
export RUSTC_WRAPPER="$here/rustc-wrapper.sh"
# --cfg fuzzing for every crate built for the target (as cargo-fuzz does);
# the coverage instrumentation itself is added by the wrapper, per crate.
export RUSTFLAGS="--cfg fuzzing ${FUZZ_RUSTFLAGS:-}"
export CARGO_INCREMENTAL=0
bindir="$here/target/$triple/release"

targets=(ark_archive arkc_archive manifest pipeline_yaml expression webhook_payload)

# Per-target libFuzzer options: a malloc limit and RSS cap well under the
# machine's memory, a per-input timeout, and the largest input tried.
max_len() {
  case "$1" in
    ark_archive | arkc_archive) echo 65536 ;;
    pipeline_yaml) echo 16384 ;;
    *) echo 4096 ;;
  esac
}
# One fuzzing process, in-process (libFuzzer's default): no -jobs/-workers,
# which would fork a child per job and send its output to ./fuzz-N.log.
common_opts() {
  echo "-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -max_len=$(max_len "$1") \
-artifact_prefix=$here/artifacts/$1/ -print_final_stats=1"
}

build() {
  cargo build --release --locked --target "$triple" ${FUZZ_JOBS:+-j "$FUZZ_JOBS"} --bins
}

check_target() {
  local t
  for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done
  echo "unknown target \`$1\`; targets: ${targets[*]}" >&2
  exit 2
}

# One libFuzzer run; a crash, timeout or OOM makes it exit non-zero.
fuzz() {
  local target=$1
  shift
  mkdir -p "artifacts/$target" "corpus/$target"
  # shellcheck disable=SC2046
  "$bindir/$target" $(common_opts "$target") "$@" "corpus/$target"
}

cmd=${1:-}
case "$cmd" in
  build)
    build
    ;;
  smoke)
    secs=${2:-15}
    build
    mkdir -p logs
    failed=()
    for t in "${targets[@]}"; do
      echo "==> fuzz $t for ${secs}s"
      # A smoke run reads the corpus but adds nothing to it (the corpus in the
      # repo changes only through `long` + `merge`): new inputs go to a scratch dir.
      scratch=$(mktemp -d)
      mkdir -p "artifacts/$t"
      # shellcheck disable=SC2046
      if "$bindir/$t" $(common_opts "$t") -max_total_time="$secs" "$scratch" "corpus/$t" \
        >"logs/smoke-$t.log" 2>&1; then
        grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units)' "logs/smoke-$t.log" | tail -2 || true
      else
        echo "fuzz target $t FAILED; see fuzz/logs/smoke-$t.log and fuzz/artifacts/$t/" >&2
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "logs/smoke-$t.log" >&2 || tail -30 "logs/smoke-$t.log" >&2
        failed+=("$t")
      fi
      rm -rf "$scratch"
    done
    # The closing line in the plain "N passed, N failed" form CI reads.
    echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
    if [ ${#failed[@]} -gt 0 ]; then
      echo "fuzz smoke: crashes in ${failed[*]}" >&2
      exit 1
    fi
    ;;
  long)
    target=${2:?usage: run.sh long TARGET RUNS|SECONDSs [libFuzzer args]}
    budget=${3:?usage: run.sh long TARGET RUNS|SECONDSs [libFuzzer args]}
    shift 3
    check_target "$target"
    case "$budget" in
      *s) limit=(-max_total_time="${budget%s}") ;;
      *) limit=(-runs="$budget") ;;
    esac
    mkdir -p logs
    fuzz "$target" "${limit[@]}" "$@" 2>&1 | tee "logs/long-$target.log"
    ;;
  merge)
    target=${2:?usage: run.sh merge TARGET}
    check_target "$target"
    tmp=$(mktemp -d)
    # The smallest set of inputs that keeps every edge (cov) of the corpus:
    # set-cover merge on edge coverage alone (-use_counters=0 drops hit-count
    # buckets, which would keep several inputs per edge). Keeps the repo small.
    # shellcheck disable=SC2046
    "$bindir/$target" $(common_opts "$target") -set_cover_merge=1 -use_counters=0 \
      "$tmp" "corpus/$target"
    rm -rf "corpus/$target"
    mv "$tmp" "corpus/$target"
    echo "corpus/$target: $(ls "corpus/$target" | wc -l) files, $(du -sh "corpus/$target" | cut -f1)"
    ;;
  repro)
    target=${2:?usage: run.sh repro TARGET FILE...}
    shift 2
    check_target "$target"
    files=()
    for f in "$@"; do files+=("$(from_caller "$f")"); done
    # shellcheck disable=SC2046
    "$bindir/$target" $(common_opts "$target") "${files[@]}"
    ;;
  minimize)
    target=${2:?usage: run.sh minimize TARGET CRASH}
    crash=$(from_caller "${3:?usage: run.sh minimize TARGET CRASH}")
    check_target "$target"
    # shellcheck disable=SC2046
    "$bindir/$target" $(common_opts "$target") -minimize_crash=1 -runs=100000 \
      -exact_artifact_path="$crash.min" "$crash"
    ;;
  list)
    printf '%s\n' "${targets[@]}"
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
