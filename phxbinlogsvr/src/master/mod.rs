//! Replication master served to the local MariaDB replica.
