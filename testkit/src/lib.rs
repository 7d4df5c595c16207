//! Test support: isolated, throw-away `mariadbd` instances for integration
//! tests (binlog server, failover agent, proxy).
//!
//! Each instance gets its own temporary directory (data directory copied
//! from a `mariadb-install-db` template, `my.cnf`, logs, socket), a free
//! port on 127.0.0.1 and a unique `server_id`, and runs with the settings of
//! the design brief (`log_bin`, `sync_binlog=1`,
//! `innodb_flush_log_at_trx_commit=1`, `binlog_format=ROW`,
//! `gtid_strict_mode=1`, optionally lossless semi-sync). `start()` returns
//! once the server answers `SELECT 1`. Dropping the instance stops it and
//! removes its files, also when the test panics; if the test process is
//! SIGKILLed, the kernel kills the server with it. Tests may run side by
//! side (`cargo test` threads, several test binaries at once).
//!
//! ```no_run
//! # async fn demo() -> Result<(), testkit::TestkitError> {
//! use std::time::Duration;
//! use testkit::{Cluster, MariaDb};
//!
//! // One instance with the defaults.
//! let db = MariaDb::start().await?;
//! db.exec("CREATE TABLE test.t (id INT PRIMARY KEY); INSERT INTO test.t VALUES (1)").await?;
//! let n: i64 = db.query_one("SELECT COUNT(*) FROM test.t").await?;
//! assert_eq!(n, 1);
//! assert_eq!(db.gtid_binlog_pos().await?, format!("0-{}-2", db.server_id()));
//!
//! // A lossless semi-sync master and a replica started in replica mode.
//! let master = MariaDb::builder().server_id(1).semi_sync_master(true).start().await?;
//! let replica = MariaDb::builder().server_id(2).replica_mode(true).start().await?;
//! replica.replicate_from(&master).await?;
//! master.exec("CREATE TABLE test.r (id INT PRIMARY KEY)").await?; // returns after the ACK
//! replica.wait_for_gtid(&master.gtid_binlog_pos().await?, Duration::from_secs(10)).await?;
//!
//! // Crash and restart: committed data survives.
//! master.kill9().await?;
//! master.start_again().await?;
//!
//! // Three at once.
//! let cluster = Cluster::start(3).await?;
//! for node in &cluster {
//!     println!("{} on port {} (server_id {})", node.name(), node.port(), node.server_id());
//! }
//! # Ok(()) }
//! ```
//!
//! Other clients: [`MariaDb::url`] (`mysql://root@127.0.0.1:PORT`),
//! [`MariaDb::opts`] for mysql_async, or `mariadb --defaults-file=<dir>/my.cnf`.
//!
//! # Accounts
//!
//! | account | password | for |
//! | --- | --- | --- |
//! | `root` (`localhost`, `127.0.0.1`, `::1`) | none | operators, the test itself; has READ ONLY ADMIN: writes through `read_only=ON` |
//! | [`REPL_USER`] | [`REPL_PASSWORD`] | replicas / the binlog server: REPLICATION SLAVE, REPLICATION CLIENT |
//! | [`APP_USER`] | [`APP_PASSWORD`] | applications: data and schema privileges, no SUPER / READ ONLY ADMIN, so `read_only=ON` stops it |
//!
//! # Environment
//!
//! - `TESTKIT_KEEP=1`: keep instance directories after drop and print where.
//! - `TESTKIT_MARIADBD`, `TESTKIT_INSTALL_DB`: use these binaries.
//! - `TESTKIT_DIR`: base directory (default `$TMPDIR/phx-testkit-<uid>`).
//!
//! # Things to know
//!
//! - MariaDB missing: the error says to run
//!   `apt-get install -y mariadb-server mariadb-client`.
//! - Start-up takes about 0.3 s per instance once the template exists (the
//!   first instance of a new MariaDB build also runs `mariadb-install-db`,
//!   ~0.6 s, cached across test processes under the base directory).
//! - Don't keep instances in `static`s: statics are never dropped, so the
//!   directory stays behind (removed by the next test run's sweep).
//! - The SQL helpers open one connection per call. None has a connect
//!   timeout: against a `sigstop()`ped server, wrap calls in
//!   `tokio::time::timeout`.
//! - Processes are forked from one long-lived thread of the kit, because
//!   `PR_SET_PDEATHSIG` follows the forking thread, not the process.

mod builder;
mod cluster;
mod error;
mod instance;
mod paths;
mod ports;
mod spawner;
mod template;

pub use builder::{Builder, DEFAULT_STARTUP_TIMEOUT, REPLICA_MODE_ARGS, SEMI_SYNC_TIMEOUT_MS};
pub use cluster::{Cluster, start_many};
pub use error::{INSTALL_COMMAND, Result, TestkitError};
pub use instance::{ENV_KEEP, MariaDb};
pub use paths::{Binaries, ENV_DIR, ENV_INSTALL_DB, ENV_MARIADBD, base_dir, binaries};

/// Re-export of the client crate, so tests use the same version.
pub use mysql_async;

/// The superuser (no password).
pub const ROOT_USER: &str = "root";
/// The replication account (REPLICATION SLAVE, REPLICATION CLIENT).
pub const REPL_USER: &str = "repl";
/// [`REPL_USER`]'s password.
pub const REPL_PASSWORD: &str = "repl-secret";
/// The application account (no SUPER, no READ ONLY ADMIN).
pub const APP_USER: &str = "app";
/// [`APP_USER`]'s password.
pub const APP_PASSWORD: &str = "app-secret";

#[cfg(test)]
mod tests {
    #[test]
    fn instances_can_be_shared_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::MariaDb>();
        send_sync::<crate::Cluster>();
        send_sync::<crate::TestkitError>();
    }
}
