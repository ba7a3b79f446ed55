#!/usr/bin/env bash
# The 3-member etcd test cluster, on loopback only.
#   eval "$(bash .ci/etcd.sh start)"   starts it and exports ARKLINE_TEST_ETCD
#   bash .ci/etcd.sh stop              stops it and removes its data
# Ports: clients ${ARKLINE_ETCD_PORT:-23790}+1..3, peers +11..13.
set -euo pipefail
base=${ARKLINE_ETCD_PORT:-23790}
dir=${ARKLINE_ETCD_DIR:-/tmp/arkline-etcd-cluster-$base}

endpoints() {
  local e=()
  for i in 1 2 3; do e+=("http://127.0.0.1:$((base + i))"); done
  (IFS=,; echo "${e[*]}")
}

stop() {
  for i in 1 2 3; do
    if [ -f "$dir/m$i.pid" ]; then
      kill -9 "$(cat "$dir/m$i.pid")" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
}

case "${1:-}" in
  start)
    command -v etcd >/dev/null || { echo "etcd is missing: bash .ci/deps.sh --test installs it" >&2; exit 1; }
    stop
    mkdir -p "$dir"
    cluster=""
    for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 + i))"; done
    for i in 1 2 3; do
      etcd --name "m$i" --data-dir "$dir/m$i" \
        --listen-client-urls "http://127.0.0.1:$((base + i))" \
        --advertise-client-urls "http://127.0.0.1:$((base + i))" \
        --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token "arkline-test-$base" --log-level warn \
        >"$dir/m$i.log" 2>&1 </dev/null &
      echo $! >"$dir/m$i.pid"
    done
    for _ in $(seq 1 200); do
      if ETCDCTL_API=3 etcdctl --endpoints "$(endpoints)" endpoint health >/dev/null 2>&1; then
        echo "export ARKLINE_TEST_ETCD=$(endpoints)"
        exit 0
      fi
      sleep 0.1
    done
    echo "the etcd test cluster did not become healthy; logs in $dir" >&2
    tail -5 "$dir"/m*.log >&2 || true
    exit 1
    ;;
  stop) stop ;;
  endpoints) endpoints ;;
  *) echo "usage: bash .ci/etcd.sh start|stop|endpoints" >&2; exit 2 ;;
esac
