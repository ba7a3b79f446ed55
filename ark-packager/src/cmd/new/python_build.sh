#!/bin/sh
# Builds the component with componentize-py (pip install componentize-py==0.25.1):
# the bindings of the WIT world in wit/, then the component. Fetches nothing.
# Then: cargo ark package --component NAME.wasm
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/@NAME@.wasm}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here/app.py" "$here/arkline_sdk" "$work/"
cd "$work"
componentize-py -d "$here/wit" -w step bindings . >/dev/null
componentize-py -d "$here/wit" -w step componentize -p . app -o "$out" >/dev/null
echo "built $out"
