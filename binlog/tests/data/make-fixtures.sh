#!/usr/bin/env bash
# Regenerates the binlog fixtures in this directory from a throw-away mariadbd.
#
# Needs: mariadbd, mariadb-install-db, mariadb (Debian 12: apt-get install -y
# mariadb-server mariadb-client). Run as root (or as a user that may run
# mariadbd with --user=$(id -un)). Nothing outside a temp dir is touched; the
# server listens on a unix socket and a free loopback port only.
#
# Output: fx-bin.000001..3 (binlog files, with the 4-byte magic; 1 and 2 with
# CRC32 checksums, 3 without)
# and fixtures.txt (mariadbd version and SHOW BINLOG EVENTS for reference).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d /tmp/binlog-fixtures.XXXXXX)"
port="${FIXTURE_PORT:-23306}"
sock="$tmp/mysqld.sock"
user="$(id -un)"

cleanup() {
  if [[ -n "${pid:-}" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

mariadb-install-db --no-defaults --datadir="$tmp/data" --user="$user" \
  --auth-root-authentication-method=normal --skip-test-db >"$tmp/install.log" 2>&1

# Fixed start-up flags: ROW format, CRC32 checksums (10.11 default), GTID
# strict mode, server_id 1, domain 0. Annotations are left at the default.
mariadbd --no-defaults --datadir="$tmp/data" --user="$user" \
  --socket="$sock" --port="$port" --bind-address=127.0.0.1 \
  --pid-file="$tmp/mysqld.pid" --log-error="$tmp/error.log" \
  --log-bin="$tmp/data/fx-bin" --binlog-format=ROW --binlog-checksum=CRC32 \
  --server-id=1 --gtid-strict-mode=1 --gtid-domain-id=0 \
  --innodb-buffer-pool-size=32M --skip-name-resolve &
pid=$!

for _ in $(seq 1 100); do
  mariadb --no-defaults -uroot -S "$sock" -e 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.2
done

sql() { mariadb --no-defaults -uroot -S "$sock" "$@"; }

# Start from a clean binlog: everything before RESET MASTER (install-time
# noise) is gone; the new file is fx-bin.000001 with GTIDs from 0-1-1.
sql -e 'RESET MASTER'

sql <<'SQL'
-- 0-1-1: DDL, standalone GTID
CREATE DATABASE fx;
-- 0-1-2: DDL, standalone GTID
CREATE TABLE fx.t (id INT PRIMARY KEY, v VARCHAR(100), b MEDIUMBLOB) ENGINE=InnoDB;
-- 0-1-3: DDL, standalone GTID
CREATE TABLE fx.m (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=MyISAM;
-- 0-1-4: autocommit INSERT (GTID, BEGIN, ANNOTATE, TABLE_MAP, WRITE_ROWS, XID)
INSERT INTO fx.t VALUES (1, 'one', NULL);
-- 0-1-5: multi-statement transaction
BEGIN;
INSERT INTO fx.t VALUES (2, 'two', NULL), (3, 'three', NULL);
UPDATE fx.t SET v = 'uno' WHERE id = 1;
DELETE FROM fx.t WHERE id = 3;
COMMIT;
-- 0-1-6: a big row (about 20 KB)
INSERT INTO fx.t VALUES (4, 'big', REPEAT('0123456789abcdef', 1250));
-- 0-1-7: non-transactional engine: the group ends with QUERY "COMMIT"
INSERT INTO fx.m VALUES (1, 'myisam');
-- 0-1-8: mixed InnoDB + MyISAM rolled back: group ends with QUERY "ROLLBACK"
BEGIN;
INSERT INTO fx.t VALUES (5, 'rolled back', NULL);
INSERT INTO fx.m VALUES (2, 'kept');
ROLLBACK;
-- 0-1-9 (XA PREPARE group, ends with XA_PREPARE event) and
-- 0-1-10 (XA COMMIT group, ends with QUERY "XA COMMIT ...")
XA START 'fxa';
INSERT INTO fx.t VALUES (6, 'xa', NULL);
XA END 'fxa';
XA PREPARE 'fxa';
XA COMMIT 'fxa';
-- 0-1-11 (XA PREPARE group) and 0-1-12 (QUERY "XA ROLLBACK ...")
XA START 'fxb';
INSERT INTO fx.t VALUES (9, 'xa rolled back', NULL);
XA END 'fxb';
XA PREPARE 'fxb';
XA ROLLBACK 'fxb';
-- 0-1-13: one-phase XA commit
XA START 'fxc';
INSERT INTO fx.t VALUES (10, 'xa one phase', NULL);
XA END 'fxc';
XA COMMIT 'fxc' ONE PHASE;
-- 0-1-14: savepoints: QUERY "SAVEPOINT" and "ROLLBACK TO" stay inside the group
BEGIN;
INSERT INTO fx.t VALUES (11, 'kept', NULL);
SAVEPOINT s1;
INSERT INTO fx.t VALUES (12, 'undone', NULL);
ROLLBACK TO SAVEPOINT s1;
INSERT INTO fx.t VALUES (13, 'kept too', NULL);
COMMIT;
-- 0-1-15: CREATE TABLE ... SELECT (ROW format: a transaction, not standalone)
CREATE TABLE fx.c ENGINE=InnoDB SELECT id, v FROM fx.t WHERE id <= 2;
-- 2-1-1: another replication domain
SET SESSION gtid_domain_id = 2;
INSERT INTO fx.t VALUES (7, 'domain two', NULL);
SET SESSION gtid_domain_id = 0;
SQL

# Rotate: fx-bin.000001 ends with ROTATE; fx-bin.000002 starts with
# FDE, GTID_LIST (0-1-15,2-1-1), BINLOG_CHECKPOINT.
sql -e 'FLUSH BINARY LOGS'

sql <<'SQL'
-- 0-1-16: autocommit UPDATE in the second file
UPDATE fx.t SET v = 'two!' WHERE id = 2;
-- 0-1-17: DDL
DROP TABLE fx.c;
-- Switching the checksum rotates the binlog: fx-bin.000003 has no CRCs.
SET GLOBAL binlog_checksum = NONE;
-- 0-1-18: autocommit INSERT without checksums
INSERT INTO fx.t VALUES (8, 'no crc', NULL);
SQL

{
  echo "# $(mariadbd --version)"
  sql -e "SELECT @@version, @@binlog_format, @@binlog_checksum, @@binlog_annotate_row_events, @@binlog_row_image, @@gtid_binlog_pos\G"
  sql -e "SHOW BINLOG EVENTS IN 'fx-bin.000001'"
  sql -e "SHOW BINLOG EVENTS IN 'fx-bin.000002'"
  sql -e "SHOW BINLOG EVENTS IN 'fx-bin.000003'"
} >"$tmp/fixtures.txt"

# Clean shutdown: fx-bin.000003 gets a STOP event and its FDE's IN_USE flag
# is cleared.
kill "$pid"; wait "$pid" 2>/dev/null || true
pid=

cp "$tmp/data/fx-bin.000001" "$tmp/data/fx-bin.000002" "$tmp/data/fx-bin.000003" \
  "$tmp/fixtures.txt" "$here/"
chmod 644 "$here"/fx-bin.00000*
ls -l "$here"
