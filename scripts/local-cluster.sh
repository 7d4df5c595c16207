#!/usr/bin/env bash
# Starts a 3-node cluster on this machine from configs/cluster-3.yaml: three
# phxbinlogsvr processes, each running its own mariadbd under the agent
# (--supervise-mariadb), data under target/phxsql/cluster-3/. Waits until a
# master is elected, prints how to connect, and runs until Ctrl-C, which
# stops everything cleanly (the data stays for the next start).
#
#   scripts/local-cluster.sh           start (or restart) the cluster
#   scripts/local-cluster.sh --reset   throw the old data away first
set -euo pipefail
cd "$(dirname "$0")/.."

cfg=configs/cluster-3.yaml
data=target/phxsql/cluster-3
if [ "${1:-}" = "--reset" ]; then
    rm -rf "$data"
fi

scripts/install-deps.sh
# Debian installs mariadbd in /usr/sbin, which is not on every PATH.
export PATH="$PATH:/usr/sbin"
echo "Building phxbinlogsvr (release) ..."
cargo build --release -p phxbinlogsvr --bin phxbinlogsvr
mkdir -p "$data"

pids=()
stop() {
    trap - INT TERM EXIT
    if [ "${#pids[@]}" -gt 0 ]; then
        echo
        echo "Stopping (each node stops its mariadbd cleanly) ..."
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap stop INT TERM EXIT

for n in 1 2 3; do
    target/release/phxbinlogsvr --config "$cfg" --node "node$n" --supervise-mariadb \
        >>"$data/node$n.log" 2>&1 &
    pids+=("$!")
done

# GET /status of a node's admin API (base_port + 2), with bash alone.
status() {
    local port=$1
    exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 1
    printf 'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
    cat <&3
    exec 3<&-
}

echo "Starting 3 nodes (the first start initialises three MariaDB data directories) ..."
master=""
for _ in $(seq 1 600); do
    for n in 1 2 3; do
        if ! kill -0 "${pids[$((n - 1))]}" 2>/dev/null; then
            echo "node$n exited; its log, $data/node$n.log, ends with:" >&2
            tail -n 20 "$data/node$n.log" >&2
            exit 1
        fi
        port=$((17000 + (n - 1) * 10 + 2))
        if status "$port" 2>/dev/null | grep -q '"role":"master"'; then
            master=$n
        fi
    done
    [ -n "$master" ] && break
    sleep 0.2
done
if [ -z "$master" ]; then
    echo "no master after 120 s; logs in $data/node*.log" >&2
    exit 1
fi
mport=$((17000 + (master - 1) * 10 + 5))
other=$((master % 3 + 1))
cat <<INFO

A 3-node cluster is running; node$master is the master.

  Write (the master's MariaDB; the proxy's read-write port comes later):
    mariadb -h 127.0.0.1 -P $mport -u phxsql_admin -pdemo-admin-password
  Read (any node's MariaDB: ports 17005, 17015, 17025; read-only).
  Status of a node (admin API: ports 17002, 17012, 17022):
    curl -s localhost:17002/status
  Switch the master to node$other:
    curl -s -X POST -H 'Authorization: Bearer demo-admin-token' \\
         -H 'Content-Type: application/json' -d '{"to":"node$other"}' \\
         localhost:$((17000 + (master - 1) * 10 + 2))/switchover
  Logs: $data/node{1,2,3}.log

Kill a node (kill -9 one of: ${pids[*]}) to see another take over in about 2 s.
Ctrl-C stops the cluster.
INFO
wait "${pids[@]}" || true
