#!/usr/bin/env bash
# arkline against its floor and its peers, in one run (issue 12; DESIGN.md, "Budgets").
#
#   bash benches/compare.sh
#
# Runs the workspace's `runtime` bench, `dispatch` group (arkline vs raw wasmtime),
# then the peer suite in benches/peers (arkline, Extism, process-per-step), and
# prints one table of criterion medians and ratios. About 2 minutes on 2 cores once
# built; the first build of benches/peers compiles a second wasmtime (Extism 1.30
# pins wasmtime 43) in its own target directory.
#
# Environment: ARKLINE_FAULTS_ARK (the `faults` archive; packaged when missing),
# BENCH_ARGS (criterion options, default "--warm-up-time 1 --measurement-time 3").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
peers="$root/benches/peers"
bench_args=${BENCH_ARGS:---warm-up-time 1 --measurement-time 3}
export ARKLINE_FAULTS_ARK=${ARKLINE_FAULTS_ARK:-$root/target/ark/faults-0.1.0.ark}
export CARGO_INCREMENTAL=0
# Some hosts capture a backtrace per call when these are set.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

step() { printf '\033[1;32m%12s\033[0m %s\n' "$1" "$2" >&2; }

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 ||
    step Warning "could not add the wasm32-unknown-unknown target; the Extism guest needs it"

if [[ ! -f $ARKLINE_FAULTS_ARK ]]; then
    step Packaging "faults (cargo ark package -p faults)"
    (cd "$root" && cargo run --quiet -p cargo-ark -- ark package -p faults)
    [[ -f $ARKLINE_FAULTS_ARK ]] || {
        echo "compare.sh: $ARKLINE_FAULTS_ARK still missing after packaging faults" >&2
        exit 1
    }
fi

step Running "workspace runtime bench, dispatch group"
(cd "$root" && cargo bench -p arkline-benches --bench runtime -- dispatch $bench_args) >&2

step Running "peers bench"
(cd "$peers" && cargo bench --locked --bench peers -- $bench_args) >&2

workspace_criterion=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/criterion
peers_criterion=$(cd "$peers" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/criterion

echo
echo "Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), Linux $(uname -r), $(rustc --version | cut -d' ' -f1-2)"
echo
(cd "$peers" && cargo run --quiet --locked --release --bin peers-table -- \
    "$workspace_criterion" "$peers_criterion")
