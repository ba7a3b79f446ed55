#!/bin/sh
# Builds semver.wasm with componentize-js (npm install -g
# @bytecodealliance/componentize-js@0.23.0) against arkline's WIT world, with
# the WASI features the step does not use left out. Fetches nothing.
#
# componentize-js loads modules from its working directory only, so the
# build runs in a directory holding app.js and, as ./sdk/, the JavaScript SDK.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit="$here/../../wit/since_v0.1.0"
out=${1:-$here/semver.wasm}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/app.js" "$work/"
mkdir "$work/sdk"
cp "$here/../sdk-js/index.js" "$here/../sdk-js/config.js" "$work/sdk/"
cd "$work"
componentize-js app.js --wit "$wit" -n step -d http fetch-event -o "$out" >/dev/null
echo "built $out"
