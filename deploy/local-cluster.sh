#!/usr/bin/env bash
# A real three-controller drover cluster on this machine: controllers 1, 2, 3
# listening on 127.0.0.1:7001, 127.0.0.2:7001 and 127.0.0.3:7001, each with its
# own sled data dir under .drover-local/. (`droverctl lab up` will replace this
# with isolated lab hosts.)
#
#   deploy/local-cluster.sh up [--apply FILE]   build, start, write a droverctl context
#   deploy/local-cluster.sh status              processes and `droverctl cluster status`
#   deploy/local-cluster.sh down                stop the controllers (data is kept)
#   deploy/local-cluster.sh clean               stop and delete the data
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.drover-local
target="${CARGO_TARGET_DIR:-target}/release"
peers="1=127.0.0.1:7001,2=127.0.0.2:7001,3=127.0.0.3:7001"
servers="127.0.0.1:7001,127.0.0.2:7001,127.0.0.3:7001"

running() { [ -f "$dir/c$1.pid" ] && kill -0 "$(cat "$dir/c$1.pid")" 2>/dev/null; }

up() {
  local apply=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --apply) apply="${2:?--apply needs a file}"; shift 2 ;;
      *) echo "error: unknown option $1 (try: up [--apply FILE])" >&2; exit 2 ;;
    esac
  done
  echo "building release binaries (the first build takes a few minutes)..."
  cargo build --release --quiet -p drover-controller -p drover-ctl
  mkdir -p "$dir"
  for i in 1 2 3; do
    if running "$i"; then echo "controller $i already running (pid $(cat "$dir/c$i.pid"))"; continue; fi
    nohup "$target/drover-controller" --id "$i" --listen "127.0.0.$i:7001" \
      --data-dir "$dir/controller-$i" --peers "$peers" >"$dir/controller-$i.log" 2>&1 &
    echo $! >"$dir/c$i.pid"
    echo "started controller $i on 127.0.0.$i:7001 (log: $dir/controller-$i.log)"
  done
  "$target/droverctl" config set-context local --server "$servers" >/dev/null
  "$target/droverctl" config use-context local >/dev/null
  # Wait for an elected leader (a few hundred milliseconds normally).
  for _ in $(seq 1 100); do
    if "$target/droverctl" cluster status 2>/dev/null | grep -q '^leader: [0-9]'; then break; fi
    sleep 0.1
  done
  "$target/droverctl" cluster status
  if [ -n "$apply" ]; then "$target/droverctl" apply -f "$apply"; "$target/droverctl" get deployments; fi
  echo
  echo "next: $target/droverctl get deployments    (context 'local' is now current)"
  echo "      deploy/local-cluster.sh down"
}

down() {
  for i in 1 2 3; do
    if running "$i"; then kill "$(cat "$dir/c$i.pid")"; echo "stopped controller $i"; fi
    rm -f "$dir/c$i.pid"
  done
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  clean) down; rm -rf "$dir"; echo "removed $dir" ;;
  status)
    for i in 1 2 3; do
      if running "$i"; then echo "controller $i: running (pid $(cat "$dir/c$i.pid"))"; else echo "controller $i: stopped"; fi
    done
    "$target/droverctl" cluster status || true ;;
  *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
