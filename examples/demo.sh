#!/usr/bin/env bash
# The quickstart demo: build the `shell` step plugin into a WebAssembly component,
# package it as a reproducible .ark, package it again to show the bytes do not
# change, inspect it, run it with `sh` granted, run steps of the `faults` test biz in
# the isolation runtime (one that works, one that is stopped by its memory limit),
# check the example pipelines with `arkline validate`, then bundle the two-engine
# quickstart container (examples/quickstart) into an .arkc and run both engines'
# pipelines concurrently in one `arkline run` process, on a fresh data dir.
set -euo pipefail
cd "$(dirname "$0")/.."
# protoc, for the etcd client's build (installed when missing).
bash .ci/deps.sh

cargo run --quiet -p cargo-ark -- ark package -p shell
ark="${CARGO_TARGET_DIR:-target}/ark/shell-0.1.0.ark"
first=$(sha256sum "$ark" | cut -d' ' -f1)
cargo run --quiet -p cargo-ark -- ark package -p shell --quiet
second=$(sha256sum "$ark" | cut -d' ' -f1)
if [ "$first" = "$second" ]; then
  echo "reproducible: packaging twice gave the same sha256 $first" >&2
else
  echo "NOT reproducible: $first then $second" >&2
  exit 1
fi
echo
cargo run --quiet -p cargo-ark -- ark inspect "$ark"
echo
cargo run --quiet -p cargo-ark -- ark run -p shell run --grant process=sh \
  --with '{"script": "echo hello from a granted, confined sh; echo answer=42 >> \"$ARKLINE_OUTPUT\""}'
echo
cargo run --quiet -p cargo-ark -- ark run -p faults upper --with '{"text": "hello from a fresh wasm instance"}'
echo
if cargo run --quiet -p cargo-ark -- ark run -p faults memory-bomb --memory 64MiB; then
  echo "the memory bomb was not stopped" >&2
  exit 1
fi
echo "(the memory bomb was stopped by its limit; the host carried on)" >&2
echo
cargo run --quiet -p arkline-cli -- validate examples/pipelines/*.yaml
echo
# Two teams' engines merged in one process: team-a builds with shell (`sh`
# granted, quota 2), team-b transforms data with steps that need no grant (quota
# 1, so its second pipeline queues). Bundle them, check the bundle, run it.
cargo run --quiet -p cargo-ark -- ark container --manifest-path examples/quickstart/container.toml
arkc=examples/quickstart/target/ark/quickstart-0.1.0.arkc
cargo run --quiet -p arkline-cli -- validate "$arkc"
echo
data=$(mktemp -d "${TMPDIR:-/tmp}/arkline-quickstart.XXXXXX")
trap 'rm -rf "$data"' EXIT
cargo run --quiet -p arkline-cli -- run "$arkc" --data-dir "$data"
