#!/bin/sh
# Builds the component with componentize-js (npm install -g
# @bytecodealliance/componentize-js@0.23.0) against the WIT world in wit/.
# Fetches nothing. Then: cargo ark package --component NAME.wasm
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/@NAME@.wasm}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
# componentize-js reads modules from its working directory.
cd "$here"
componentize-js app.js --wit wit -n step -d http fetch-event -o "$out" >/dev/null
echo "built $out"
