//! The one error type of the test kit.

use std::path::PathBuf;
use std::time::Duration;

/// What to run when MariaDB is missing. Part of [`TestkitError::MissingBinary`]'s message.
pub const INSTALL_COMMAND: &str = "apt-get install -y mariadb-server mariadb-client";

/// Everything that can go wrong while starting, driving or querying an instance.
///
/// Start-up errors carry the tail of the instance's error log, so a failing
/// test prints why `mariadbd` did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// `mariadbd` or `mariadb-install-db` is not installed.
    #[error(
        "{program} not found (looked on PATH and in {looked}); MariaDB is not installed: \
         install it with `apt-get install -y mariadb-server mariadb-client`"
    )]
    MissingBinary {
        /// The program that was looked for.
        program: &'static str,
        /// Where it was looked for, besides PATH.
        looked: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the kit was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// `mariadb-install-db` failed to create the template data directory.
    #[error("mariadb-install-db failed ({status}); its output ({log}) ends with:\n{log_tail}")]
    InstallDb {
        /// Exit status (or "timed out").
        status: String,
        /// Its captured output.
        log: PathBuf,
        /// The last lines of that output.
        log_tail: String,
    },

    /// `mariadbd` exited before it answered a query.
    #[error(
        "mariadbd `{name}` exited during start-up ({status}); its error log {log} ends with:\n{log_tail}"
    )]
    Exited {
        /// The instance's name.
        name: String,
        /// Its exit status.
        status: String,
        /// Its error log.
        log: PathBuf,
        /// The last lines written to the error log (and stderr) by this start.
        log_tail: String,
    },

    /// `mariadbd` kept running but did not answer `SELECT 1` before the deadline. It was killed.
    #[error(
        "mariadbd `{name}` did not answer on 127.0.0.1:{port} within {timeout:?} (last attempt: \
         {last_error}); it was killed; its error log {log} ends with:\n{log_tail}"
    )]
    StartTimeout {
        /// The instance's name.
        name: String,
        /// Its TCP port.
        port: u16,
        /// The start-up deadline.
        timeout: Duration,
        /// Why the last connection attempt failed.
        last_error: String,
        /// Its error log.
        log: PathBuf,
        /// The last lines written to the error log (and stderr) by this start.
        log_tail: String,
    },

    /// `mariadbd` could not bind its port (another process took it).
    #[error(
        "mariadbd `{name}` could not bind 127.0.0.1:{port} ({attempts} attempt(s)); its error log ends with:\n{log_tail}"
    )]
    PortInUse {
        /// The instance's name.
        name: String,
        /// The last port tried.
        port: u16,
        /// How many ports were tried.
        attempts: u32,
        /// The last lines of the error log of the last attempt.
        log_tail: String,
    },

    /// The operation needs a running `mariadbd`, and it is stopped.
    #[error("mariadbd `{name}` is not running")]
    NotRunning {
        /// The instance's name.
        name: String,
    },

    /// `start_again` was called while the instance runs.
    #[error("mariadbd `{name}` is already running (pid {pid})")]
    AlreadyRunning {
        /// The instance's name.
        name: String,
        /// Its process id.
        pid: u32,
    },

    /// A clean stop (SIGTERM) did not finish in time; the process was then killed.
    #[error("mariadbd `{name}` did not stop within {timeout:?} after SIGTERM; it was SIGKILLed")]
    StopTimeout {
        /// The instance's name.
        name: String,
        /// How long the kit waited.
        timeout: Duration,
    },

    /// A query that must return a row returned none.
    #[error("query returned no row: {sql}")]
    NoRow {
        /// The query.
        sql: String,
    },

    /// A row did not convert to the requested Rust type.
    #[error("cannot convert the result of `{sql}`: {message}")]
    Conversion {
        /// The query.
        sql: String,
        /// What did not fit.
        message: String,
    },

    /// `variable()` / `status_var()` asked for a name the server does not have.
    #[error("unknown {kind} `{name}`")]
    UnknownVariable {
        /// "system variable" or "status variable".
        kind: &'static str,
        /// The name asked for.
        name: String,
    },

    /// Waiting for a replica (MASTER_GTID_WAIT) timed out.
    #[error("`{name}` did not reach GTID position `{pos}` within {timeout:?}")]
    GtidWaitTimeout {
        /// The instance's name.
        name: String,
        /// The position waited for.
        pos: String,
        /// How long the kit waited.
        timeout: Duration,
    },

    /// An error from the MySQL client (connection, query).
    #[error("MySQL client error: {0}")]
    Mysql(#[from] Box<mysql_async::Error>),

    /// A builder option or argument was invalid.
    #[error("invalid test kit configuration: {0}")]
    Config(String),
}

impl From<mysql_async::Error> for TestkitError {
    fn from(e: mysql_async::Error) -> Self {
        TestkitError::Mysql(Box::new(e))
    }
}

/// The kit's result type.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

/// Wraps an I/O error with what the kit was doing.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let context = context.into();
    move |source| TestkitError::Io { context, source }
}
