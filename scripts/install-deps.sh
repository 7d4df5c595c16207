#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, from Debian/Ubuntu packages,
# and does nothing when it is all present:
#   mariadb-server, mariadb-client  the servers the tests start, the CLI client
#   mariadb-backup                  phxctl node rebuild (on every node)
#   sysbench                        proxy tests and benchmarks
#   python3-pymysql                 the proxy tests' Python driver (run with /usr/bin/python3)
#
# The integration tests start their own throw-away mariadbd instances
# (testkit/): ports 10000-32767 on 127.0.0.1, sockets and data in temporary
# directories, --defaults-file. A system mariadb service the package may start
# (on 3306, /run/mysqld) is left alone; nothing of /etc/mysql applies to them.
set -euo pipefail

missing=()
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    missing+=(mariadb-server)
fi
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
command -v mariadb-backup >/dev/null 2>&1 || missing+=(mariadb-backup)
command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
if ! /usr/bin/python3 -c 'import pymysql' >/dev/null 2>&1; then
    missing+=(python3-pymysql)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
as_root=(env)
if [ "$(id -u)" -ne 0 ]; then as_root=(sudo env); fi
echo "Installing ${missing[*]} ..."
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
