//! Options of one instance.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::{Result, TestkitError};
use crate::instance::MariaDb;

/// Command-line flags of a `mariadbd` that starts as a replica (design brief,
/// "The old master"): on start-up it truncates binlog transactions that no
/// replica acknowledged and rolls them back in InnoDB, and it connects as a
/// semi-sync replica.
pub const REPLICA_MODE_ARGS: [&str; 2] =
    ["--init-rpl-role=SLAVE", "--rpl-semi-sync-slave-enabled=ON"];

/// Default start-up deadline (busy CI machines are slow; a warm start takes ~0.3 s).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// `rpl_semi_sync_master_timeout` when semi-sync is on: the maximum (ms,
/// about 49.7 days), so the master never falls back to asynchronous
/// replication (which MariaDB does silently on timeout).
pub const SEMI_SYNC_TIMEOUT_MS: u64 = 4_294_967_295;

static NEXT_SERVER_ID: AtomicU32 = AtomicU32::new(1000);

/// A unique (within this process) server id, from 1000 up: ids below 1000
/// stay free for tests that choose their own.
pub(crate) fn next_server_id() -> u32 {
    NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed)
}

/// Options of one `mariadbd` instance; [`MariaDb::builder`] makes one.
///
/// Defaults: a unique `server_id`, `gtid_domain_id=0`, binary log on with
/// the durable settings of the design brief, semi-sync master OFF (with it
/// ON and no replica, every commit waits forever), started as a master.
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    pub(crate) name: Option<String>,
    pub(crate) server_id: Option<u32>,
    pub(crate) port: Option<u16>,
    pub(crate) gtid_domain_id: u32,
    pub(crate) semi_sync_master: bool,
    pub(crate) replica_mode: bool,
    pub(crate) log_bin: bool,
    pub(crate) log_slave_updates: bool,
    pub(crate) cnf_lines: Vec<String>,
    pub(crate) args: Vec<String>,
    pub(crate) install_args: Vec<String>,
    pub(crate) startup_timeout: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: None,
            server_id: None,
            port: None,
            gtid_domain_id: 0,
            semi_sync_master: false,
            replica_mode: false,
            log_bin: true,
            log_slave_updates: true,
            cnf_lines: Vec::new(),
            args: Vec::new(),
            install_args: Vec::new(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl Builder {
    /// A name for messages and the instance directory (`[A-Za-z0-9_-]`, at
    /// most 16 characters). Default: `mariadb-<server_id>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The `server_id` (default: a fresh one per instance, from 1000 up).
    pub fn server_id(mut self, id: u32) -> Self {
        self.server_id = Some(id);
        self
    }

    /// A fixed TCP port instead of a free one picked by the kit. The start
    /// then fails with [`TestkitError::PortInUse`] if the port is taken
    /// (a picked port is replaced and retried instead).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The `gtid_domain_id` (default 0).
    pub fn gtid_domain_id(mut self, id: u32) -> Self {
        self.gtid_domain_id = id;
        self
    }

    /// Lossless semi-sync master: `rpl_semi_sync_master_enabled=ON`,
    /// `wait_point=AFTER_SYNC`, `wait_no_slave=ON`, timeout
    /// [`SEMI_SYNC_TIMEOUT_MS`]. With it on, a commit returns only after a
    /// semi-sync replica acknowledged it: forever without one. Default off.
    pub fn semi_sync_master(mut self, on: bool) -> Self {
        self.semi_sync_master = on;
        self
    }

    /// Start with [`REPLICA_MODE_ARGS`] (`--init-rpl-role=SLAVE
    /// --rpl-semi-sync-slave-enabled=ON`). Default off.
    pub fn replica_mode(mut self, on: bool) -> Self {
        self.replica_mode = on;
        self
    }

    /// Binary log on (`log_bin=mysql-bin` in the data directory) or off
    /// (`skip-log-bin`). Default on.
    pub fn log_bin(mut self, on: bool) -> Self {
        self.log_bin = on;
        self
    }

    /// `log_slave_updates` (default ON: a replica's binlog then holds every
    /// transaction, so its `gtid_binlog_pos` can be compared with the log).
    pub fn log_slave_updates(mut self, on: bool) -> Self {
        self.log_slave_updates = on;
        self
    }

    /// One more line for the `[mysqld]` section of `my.cnf`, e.g.
    /// `"innodb_log_file_size=256M"`. Later lines win over the kit's.
    pub fn cnf(mut self, line: impl Into<String>) -> Self {
        self.cnf_lines.push(line.into());
        self
    }

    /// Same as `cnf("{key}={value}")`.
    pub fn option(self, key: &str, value: impl std::fmt::Display) -> Self {
        self.cnf(format!("{key}={value}"))
    }

    /// One more `mariadbd` command-line argument for the first start (and for
    /// `start_again`, until `start_again_with` replaces them).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Several `mariadbd` command-line arguments (see [`Builder::arg`]).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An option for `mariadb-install-db` that shapes the data files, e.g.
    /// `"--innodb-page-size=64k"` (an option set gets its own template).
    pub fn install_arg(mut self, arg: impl Into<String>) -> Self {
        self.install_args.push(arg.into());
        self
    }

    /// How long to wait for the server to answer (default 60 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// The arguments of the first start: replica-mode flags, then [`Builder::arg`]s.
    pub(crate) fn start_args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if self.replica_mode {
            args.extend(REPLICA_MODE_ARGS.iter().map(|s| (*s).to_string()));
        }
        args.extend(self.args.iter().cloned());
        args
    }

    pub(crate) fn check(&self) -> Result<()> {
        if let Some(name) = &self.name {
            let ok = !name.is_empty()
                && name.len() <= 16
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(TestkitError::Config(format!(
                    "instance name {name:?}: use 1-16 of [A-Za-z0-9_-]"
                )));
            }
        }
        if self.server_id == Some(0) {
            return Err(TestkitError::Config(
                "server_id 0 cannot replicate; use 1 or more".into(),
            ));
        }
        if let Some(bad) = self.cnf_lines.iter().find(|l| l.contains('\n')) {
            return Err(TestkitError::Config(format!(
                "cnf line {bad:?} contains a newline"
            )));
        }
        Ok(())
    }

    /// Starts the instance and waits until it answers `SELECT 1` (see
    /// [`MariaDb`] for what it sets up).
    pub async fn start(self) -> Result<MariaDb> {
        MariaDb::launch(self).await
    }

    /// [`Builder::start`] for synchronous code: runs it on a private
    /// single-threaded tokio runtime in a helper thread (safe to call inside
    /// or outside a runtime).
    pub fn start_blocking(self) -> Result<MariaDb> {
        let handle = std::thread::Builder::new()
            .name("testkit-start".into())
            .spawn(move || -> Result<MariaDb> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(crate::error::io_err("building a tokio runtime"))?;
                rt.block_on(self.start())
            })
            .map_err(crate::error::io_err("spawning the start thread"))?;
        handle
            .join()
            .map_err(|_| TestkitError::Config("the start thread panicked".into()))?
    }
}
