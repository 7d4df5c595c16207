//! Semi-synchronous replica client of the local MariaDB master.
