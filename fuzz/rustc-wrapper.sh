#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz build (fuzz/run.sh sets it): adds libFuzzer's
# SanitizerCoverage instrumentation to the crates whose code the targets
# exercise, and leaves every other dependency (wasmtime, cranelift, tokio, …)
# uninstrumented, which keeps the build affordable and the binaries fast.
#
# Usage (by cargo): rustc-wrapper.sh /path/to/rustc ARGS…
# ARKLINE_FUZZ_INSTRUMENT=all instruments every crate instead.
set -euo pipefail
rustc=$1
shift

# The project's crates, and the parsers they hand untrusted bytes to.
instrumented=" arkline arkline_cli arkline_fuzz zip toml toml_parser toml_datetime serde_spanned \
saphyr_parser serde_json semver globset hex hmac base64 "

# run.sh builds with an explicit --target, so cargo passes `--target` only to
# what is linked into the fuzz binaries; build scripts and proc macros (and
# their dependencies, built for the host) come without it and stay plain: they
# are not linked with libFuzzer and could not resolve the coverage hooks.
crate=""
for_target=no
prev=""
for arg in "$@"; do
  [ "$prev" = "--crate-name" ] && crate=$arg
  [ "$arg" = "--target" ] && for_target=yes
  prev=$arg
done

case "$crate" in
  build_script_*|"") exec "$rustc" "$@" ;;
esac

if [ "$for_target" = yes ] &&
  { [ "${ARKLINE_FUZZ_INSTRUMENT:-}" = "all" ] || [[ "$instrumented" == *" $crate "* ]]; }; then
  exec "$rustc" "$@" \
    -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares
fi
exec "$rustc" "$@"
