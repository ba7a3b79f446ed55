#!/bin/sh
# Builds changelog.wasm with componentize-py (pip install componentize-py==0.25.1):
# the bindings of arkline's WIT world, then the component. Fetches nothing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit="$here/../../wit/since_v0.1.0"
out=${1:-$here/changelog.wasm}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/app.py" "$work/"
cd "$work"
componentize-py -d "$wit" -w step bindings . >/dev/null
componentize-py -d "$wit" -w step componentize -p . -p "$here/../sdk-python" app -o "$out" >/dev/null
echo "built $out"
