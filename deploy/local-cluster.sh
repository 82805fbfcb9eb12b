#!/usr/bin/env bash
# A real drover cluster on this machine: three controllers on 127.0.0.1:7001,
# 127.0.0.2:7001 and 127.0.0.3:7001, and agents n1..nN (default 3) on
# 127.0.1.N:7101, each with its own data dir under .drover-local/. Agents use
# the Docker runtime when a Docker engine answers (building the workload image
# drover/busybox:1 locally first), the process runtime otherwise. All agents
# share this machine's network, so host ports collide across them: the
# isolated hosts of `droverctl lab up` lift that (each agent its own network namespace).
#
# Every link is mutual TLS: the first `up` creates a cluster CA and the
# controllers' and admin's certificates under .drover-local/pki (droverctl pki
# init), gives each agent a node certificate, and writes a droverctl context
# 'local' holding the admin's certificate paths.
#
#   deploy/local-cluster.sh up [--apply FILE] [--agents N] [--runtime docker|process]
#   deploy/local-cluster.sh status              processes and `droverctl cluster status`
#   deploy/local-cluster.sh down                stop controllers and agents (data and replicas are kept)
#   deploy/local-cluster.sh clean               stop everything, remove replicas and data
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.drover-local
target="${CARGO_TARGET_DIR:-target}/release"
peers="1=127.0.0.1:7001,2=127.0.0.2:7001,3=127.0.0.3:7001"
servers="127.0.0.1:7001,127.0.0.2:7001,127.0.0.3:7001"

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

up() {
  local apply="" agents=3 runtime=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --apply) apply="${2:?--apply needs a file}"; shift 2 ;;
      --agents) agents="${2:?--agents needs a number}"; shift 2 ;;
      --runtime) runtime="${2:?--runtime needs docker or process}"; shift 2 ;;
      *) echo "error: unknown option $1 (try: up [--apply FILE] [--agents N] [--runtime docker|process])" >&2; exit 2 ;;
    esac
  done
  if [ -z "$runtime" ]; then
    if docker info >/dev/null 2>&1; then runtime=docker; else runtime=process; fi
  fi
  echo "building release binaries (the first build takes a few minutes)..."
  cargo build --release --quiet -p drover-controller -p drover-ctl -p drover-agent
  if [ "$runtime" = docker ]; then deploy/images/build.sh; fi
  mkdir -p "$dir"
  if [ ! -f "$dir/pki/ca.key" ]; then
    "$target/droverctl" pki init --dir "$dir/pki" \
      --controller 1=127.0.0.1 --controller 2=127.0.0.2 --controller 3=127.0.0.3 >/dev/null
    echo "created the cluster CA and certificates in $dir/pki"
  fi
  for i in 1 2 3; do
    if running "c$i"; then echo "controller $i already running (pid $(cat "$dir/c$i.pid"))"; continue; fi
    nohup "$target/drover-controller" --id "$i" --listen "127.0.0.$i:7001" \
      --data-dir "$dir/controller-$i" --peers "$peers" --tls-dir "$dir/pki/controller-$i" \
      >"$dir/controller-$i.log" 2>&1 &
    echo $! >"$dir/c$i.pid"
    echo "started controller $i on 127.0.0.$i:7001 (log: $dir/controller-$i.log)"
  done
  for i in $(seq 1 "$agents"); do
    if running "n$i"; then echo "agent n$i already running (pid $(cat "$dir/n$i.pid"))"; continue; fi
    if [ ! -f "$dir/agent-n$i/tls/tls.crt" ]; then
      "$target/droverctl" pki client --dir "$dir/pki" --role agent --name "n$i" \
        --host "127.0.1.$i" --out "$dir/agent-n$i/tls" >/dev/null
    fi
    nohup "$target/drover-agent" --name "n$i" --controllers "$servers" --runtime "$runtime" \
      --listen "127.0.1.$i:7101" --data-dir "$dir/agent-n$i" >"$dir/agent-n$i.log" 2>&1 &
    echo $! >"$dir/n$i.pid"
    echo "started agent n$i ($runtime runtime) on 127.0.1.$i:7101 (log: $dir/agent-n$i.log)"
  done
  "$target/droverctl" config set-context local --server "$servers" \
    --ca "$dir/pki/admin-admin/ca.crt" --cert "$dir/pki/admin-admin/tls.crt" \
    --key "$dir/pki/admin-admin/tls.key" >/dev/null
  "$target/droverctl" config use-context local >/dev/null
  # Wait for an elected leader (a few hundred milliseconds normally).
  for _ in $(seq 1 100); do
    if "$target/droverctl" cluster status 2>/dev/null | grep -q '^leader: [0-9]'; then break; fi
    sleep 0.1
  done
  "$target/droverctl" cluster status
  # Every agent Ready before anything is applied: replicas are spread over the
  # nodes registered at the time, and a late agent would get none of them.
  for _ in $(seq 1 150); do
    ready="$("$target/droverctl" get nodes 2>/dev/null | awk 'NR>1 && $2=="Ready"' | wc -l)"
    if [ "$ready" -ge "$agents" ]; then break; fi
    sleep 0.2
  done
  if [ -n "$apply" ]; then
    "$target/droverctl" apply -f "$apply"
    # Until the replicas run (or 60 s): the first start may pull nothing but
    # still creates containers.
    for _ in $(seq 1 120); do
      if ! "$target/droverctl" get replicas 2>/dev/null | awk 'NR>1{n++; if ($3!="Running") bad=1} END{exit (bad || n==0)}'; then sleep 0.5; else break; fi
    done
    "$target/droverctl" get deployments
    "$target/droverctl" get replicas
  fi
  echo
  echo "next: $target/droverctl get nodes          (context 'local' is now current)"
  echo "      $target/droverctl get replicas"
  echo "      $target/droverctl logs REPLICA -f"
  echo "      deploy/local-cluster.sh down"
}

stop_all() {
  for pidfile in "$dir"/n*.pid "$dir"/c*.pid; do
    [ -f "$pidfile" ] || continue
    name="$(basename "$pidfile" .pid)"
    if running "$name"; then kill "$(cat "$pidfile")"; echo "stopped $name"; fi
    rm -f "$pidfile"
  done
}

down() { stop_all; }

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  clean)
    # Delete every deployment first so agents remove their replicas.
    if running c1 || running c2 || running c3; then
      "$target/droverctl" get deployments -o name 2>/dev/null | xargs -r "$target/droverctl" delete >/dev/null 2>&1 || true
    fi
    stop_all
    # Replicas outlive their agents by design: remove what is left.
    if docker info >/dev/null 2>&1; then
      ids="$(docker ps -aq --filter label=drover.node 2>/dev/null | xargs -r docker inspect --format '{{.Id}} {{index .Config.Labels "drover.node"}}' 2>/dev/null | awk '$2 ~ /^n[0-9]+$/ {print $1}')"
      [ -z "$ids" ] || docker rm -f $ids >/dev/null
    fi
    for p in /proc/[0-9]*; do
      case "$(readlink "$p/cwd" 2>/dev/null)" in "$PWD/$dir"/*) kill -9 "${p#/proc/}" 2>/dev/null || true ;; esac
    done
    rm -rf "$dir"; echo "removed $dir" ;;
  status)
    for i in 1 2 3; do
      if running "c$i"; then echo "controller $i: running (pid $(cat "$dir/c$i.pid"))"; else echo "controller $i: stopped"; fi
    done
    "$target/droverctl" cluster status || true ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
