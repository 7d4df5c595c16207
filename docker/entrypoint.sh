#!/bin/bash
# phxsql-node NODE: one node of the cluster in this container: the binlog
# server (which initialises and runs mariadbd) and the proxy. When either
# exits, the other is stopped and the container exits with its status.
set -uo pipefail
node=${1:?usage: phxsql-node NODE}
cfg=${PHXSQL_CONFIG:-/etc/phxsql/cluster.yaml}

phxbinlogsvr --config "$cfg" --node "$node" --supervise-mariadb &
svr=$!
phxsqlproxy --config "$cfg" --node "$node" &
proxy=$!
stop() {
    kill -TERM "$svr" "$proxy" 2>/dev/null
    wait "$svr" "$proxy"
    exit 0
}
trap stop TERM INT
wait -n "$svr" "$proxy"
status=$?
echo "phxsql-node: a process exited ($status); stopping the node" >&2
kill -TERM "$svr" "$proxy" 2>/dev/null
wait
exit "$status"
