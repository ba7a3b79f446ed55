#!/bin/sh
# Builds semver.wasm with componentize-js (npm install -g
# @bytecodealliance/componentize-js@0.23.0) against arkline's WIT world, with
# the WASI features the step does not use left out. Fetches nothing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit="$here/../../wit/since_v0.1.0"
out=${1:-$here/semver.wasm}
componentize-js "$here/app.js" --wit "$wit" -n step -d http fetch-event -o "$out" >/dev/null
echo "built $out"
