#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: MariaDB's server and client
# binaries (Debian/Ubuntu packages). Does nothing when they are present.
#
# The integration tests start their own throw-away mariadbd instances
# (testkit/): ports 10000-32767 on 127.0.0.1, sockets and data in temporary
# directories, --defaults-file. A system mariadb service the package may start
# (on 3306, /run/mysqld) is left alone; nothing of /etc/mysql applies to them.
set -euo pipefail

if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then
    exit 0
fi
as_root=(env)
if [ "$(id -u)" -ne 0 ]; then as_root=(sudo env); fi
echo "Installing MariaDB (mariadb-server, mariadb-client) ..."
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server mariadb-client
