#!/usr/bin/env bash
# The test command (README.md): installs what is missing (protoc, etcd),
# starts the 3-member etcd test cluster on loopback, runs the workspace's
# tests, and stops the cluster whatever happened.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps.sh --test
# componentize-py's virtual environment (.ci/deps.sh installs it there).
export PATH="${ARKLINE_VENV:-$HOME/.local/share/arkline/venv}/bin:$PATH"
eval "$(bash .ci/etcd.sh start)"
trap 'bash .ci/etcd.sh stop' EXIT
cargo test --workspace "$@"
