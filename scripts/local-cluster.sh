#!/usr/bin/env bash
# A 3-node cluster on this machine, from configs/cluster-3.yaml: installs
# MariaDB when it is missing, builds the binaries (release) and runs
# `phxctl local ...`. Each node runs its mariadbd (initialised on the first
# start), its binlog server and its proxy, in the background; data and logs
# under target/phxsql/cluster-3/<node>/.
#
#   scripts/local-cluster.sh [up]     start (or restart what is not running)
#   scripts/local-cluster.sh status   one line per node
#   scripts/local-cluster.sh down     stop everything cleanly (data stays)
#   scripts/local-cluster.sh reset    stop, then throw the data away
set -euo pipefail
cd "$(dirname "$0")/.."

cfg=configs/cluster-3.yaml
action=${1:-up}
case "$action" in
up | down | status | reset) ;;
*)
    echo "usage: $0 [up|status|down|reset]" >&2
    exit 2
    ;;
esac

if [ "$action" = up ]; then
    scripts/install-deps.sh
    echo "Building phxctl, phxbinlogsvr and phxsqlproxy (release) ..."
    cargo build --release -p phxctl -p phxbinlogsvr -p phxsqlproxy --bins
fi
phxctl=target/release/phxctl
if [ ! -x "$phxctl" ]; then
    echo "$phxctl is not built yet: run $0 up first" >&2
    exit 1
fi
case "$action" in
reset)
    "$phxctl" -c "$cfg" local down
    rm -rf target/phxsql/cluster-3
    echo "data removed"
    ;;
*)
    exec "$phxctl" -c "$cfg" local "$action"
    ;;
esac
