#!/usr/bin/env bash
# Installs what building and testing arkline needs beyond the Rust toolchain,
# when it is missing: `protoc` (the etcd client's build compiles etcd's gRPC
# protocol) and, with `--test`, the `etcd` server and `etcdctl` the tests run
# and `moto_server` (an S3-compatible server, from PyPI) for the log archive,
# and `componentize-py` (PyPI, into a venv) and `componentize-js` (npm) for
# the Python and JavaScript step plugins' tests, and `chromium` with
# `chromium-driver` for the dashboard's browser tests.
# With `--test` also `docker-registry` (CNCF distribution 2.8), `skopeo`,
# `htpasswd` (apache2-utils) and `buildah` for the image plugin's registry
# and Dockerfile-build tests.
# Debian/Ubuntu packages via apt-get, as root or with passwordless sudo;
# elsewhere it says what to install. Source it or run it.
set -euo pipefail

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v etcdctl >/dev/null || need+=(etcd-client)
  command -v npm >/dev/null || need+=(nodejs npm)
  # The dashboard's tests drive a headless Chromium through WebDriver.
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  command -v python3 >/dev/null || need+=(python3)
  # The image plugin's tests push to a real registry (CNCF distribution 2.8),
  # read it back with skopeo, and make htpasswd files for basic auth.
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  # image/build's tests run a Dockerfile build with buildah (vfs storage,
  # chroot isolation; the tests run it as root, outside the process sandbox).
  command -v buildah >/dev/null || need+=(buildah)
  # componentize-py goes into a virtual environment (Debian's Python refuses
  # a system-wide pip install).
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "arkline needs: ${need[*]} (protoc; etcd and etcdctl for the tests); install them with your package manager" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "arkline needs the Debian packages ${need[*]}; install them: sudo apt-get install ${need[*]}" >&2
      exit 1
    fi
  fi
  echo "installing ${need[*]} (apt-get)" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The S3-compatible server the log archive's tests ship logs to (PyPI).
if [ "${1:-}" = "--test" ] && ! command -v moto_server >/dev/null; then
  if ! command -v pip3 >/dev/null && ! command -v pip >/dev/null; then
    echo "the tests need moto_server (an S3-compatible server): install Python's pip, then pip install 'moto[server]'" >&2
    exit 1
  fi
  echo "installing moto[server] (pip)" >&2
  "$(command -v pip3 || command -v pip)" install -q 'moto[server]' >/dev/null 2>&1 \
    || "$(command -v pip3 || command -v pip)" install -q --user 'moto[server]' >/dev/null
  # pyenv installs a new script's shim on rehash.
  if command -v pyenv >/dev/null; then pyenv rehash || true; fi
fi

# The Python step plugin's test builds it with componentize-py (PyPI), from
# a virtual environment of its own: $ARKLINE_VENV, by default
# ~/.local/share/arkline/venv (the test kit looks there; .ci/test.sh puts its
# bin/ on PATH).
venv="${ARKLINE_VENV:-$HOME/.local/share/arkline/venv}"
if [ "${1:-}" = "--test" ] && ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q '0\.25\.1'; then
  echo "installing componentize-py into $venv (pip, in a venv)" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'componentize-py==0.25.1' >/dev/null
fi

# The JavaScript step plugin's test builds it with componentize-js (npm).
if [ "${1:-}" = "--test" ] && ! command -v componentize-js >/dev/null; then
  if ! command -v npm >/dev/null; then
    echo "the tests need componentize-js: install Node.js and npm, then npm install -g @bytecodealliance/componentize-js@0.23.0" >&2
    exit 1
  fi
  echo "installing componentize-js (npm)" >&2
  npm install -g --silent '@bytecodealliance/componentize-js@0.23.0' >/dev/null
fi
