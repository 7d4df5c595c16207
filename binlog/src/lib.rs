//! MariaDB binlog events.
