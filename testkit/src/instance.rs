//! One running (or stopped) `mariadbd`.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, Row};
use tempfile::TempDir;

use crate::builder::{Builder, SEMI_SYNC_TIMEOUT_MS, next_server_id};
use crate::error::{Result, TestkitError, io_err};
use crate::paths::{Binaries, KEEP_MARKER, base_dir, binaries, copy_dir, file_len, tail_from};
use crate::ports::{PortLease, lease_fixed, lease_port};
use crate::spawner::{is_root, signal, spawn};
use crate::template;
use crate::{REPL_PASSWORD, REPL_USER, ROOT_USER};

/// Environment variable: when set (and not `0`), dropped instances keep their
/// directory and print where it is.
pub const ENV_KEEP: &str = "TESTKIT_KEEP";

/// How many ports a first start tries when `mariadbd` finds its port taken.
const PORT_ATTEMPTS: u32 = 5;
/// A clean stop (`stop()`) waits this long after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// `Drop` waits this long after SIGTERM before SIGKILL.
const DROP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one connection attempt of the readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(25);
/// Lines of the error log quoted in start-up errors.
const TAIL_LINES: usize = 40;

struct Proc {
    child: Option<Child>,
    /// Arguments of the next start (after `--defaults-file` and `--user`).
    args: Vec<String>,
}

enum ChildState {
    /// No process (never started, stopped, killed).
    Absent,
    Running(u32),
    /// It just exited and was reaped.
    Exited(ExitStatus),
}

/// A throw-away `mariadbd` with its own directory, port and socket.
///
/// Made by [`MariaDb::builder`] (or [`MariaDb::start`] for the defaults).
/// What a fresh instance has:
///
/// - a data directory copied from a `mariadb-install-db` template, in a
///   temporary directory `<base>/inst-<pid>-<name>-XXXXXX/` (see
///   [`crate::base_dir`]) which also holds `my.cnf`, `error.log`,
///   `stderr.log`, `mysqld.sock`, `mysqld.pid` and `tmp/`;
/// - accounts without a password for `root` at `localhost`, `127.0.0.1` and
///   `::1`; [`crate::REPL_USER`] with REPLICATION SLAVE and REPLICATION CLIENT;
///   [`crate::APP_USER`], an application account without SUPER and READ ONLY
///   ADMIN (so `read_only=ON` stops it, and not root); a database `test`;
/// - an empty `gtid_binlog_pos`: the set-up ran with the binary log off.
///
/// `my.cnf` (read with `--defaults-file`, so `/etc/mysql` plays no part)
/// holds the design brief's settings: `log_bin`, `sync_binlog=1`,
/// `innodb_flush_log_at_trx_commit=1`, `binlog_format=ROW`,
/// `gtid_strict_mode=1`, `log_slave_updates`, `max_allowed_packet=1G`,
/// `bind-address=127.0.0.1`, `skip-name-resolve`, optionally the semi-sync
/// master settings, and test-sized InnoDB buffers. Print it with
/// [`MariaDb::cnf_text`]; `mariadb --defaults-file=<dir>/my.cnf` opens a
/// root shell on a kept instance.
///
/// Dropping it stops the server (SIGTERM, SIGKILL after 20 s) and removes
/// its directory, also during a panic's unwinding. If the test process dies
/// without unwinding (SIGKILL, abort), the kernel SIGKILLs the server
/// (`PR_SET_PDEATHSIG`) and the next test process that uses the kit removes
/// the directory. Set `TESTKIT_KEEP=1` to keep directories for a look.
///
/// All methods take `&self`, so an instance can be shared (e.g. in an `Arc`)
/// between tasks; one task may `kill9()` it while another queries it.
pub struct MariaDb {
    name: String,
    server_id: u32,
    gtid_domain_id: u32,
    startup_timeout: Duration,
    bins: Binaries,
    root: PathBuf,
    dir: Option<TempDir>,
    port: PortLease,
    proc: Mutex<Proc>,
}

impl std::fmt::Debug for MariaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDb")
            .field("name", &self.name)
            .field("server_id", &self.server_id)
            .field("port", &self.port())
            .field("dir", &self.root)
            .field("pid", &self.pid())
            .finish()
    }
}

fn port_in_use(log: &str) -> bool {
    log.contains("Address already in use")
        || log.contains("Bind on TCP/IP port")
        || log.contains("another mysqld server running on port")
        || log.contains("another server running on port")
}

impl MariaDb {
    /// Options for a new instance.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts an instance with the default options.
    pub async fn start() -> Result<MariaDb> {
        Builder::default().start().await
    }

    pub(crate) async fn launch(b: Builder) -> Result<MariaDb> {
        b.check()?;
        let bins = binaries()?;
        let base = base_dir()?;
        let template = {
            let (bins, base, args) = (bins.clone(), base.clone(), b.install_args.clone());
            tokio::task::spawn_blocking(move || template::ensure(&bins, &base, &args))
                .await
                .map_err(|e| TestkitError::Config(format!("template task failed: {e}")))??
        };
        let server_id = b.server_id.unwrap_or_else(next_server_id);
        let name = b
            .name
            .clone()
            .unwrap_or_else(|| format!("mariadb-{server_id}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("inst-{}-{name}-", std::process::id()))
            .tempdir_in(&base)
            .map_err(io_err(format!(
                "creating an instance directory in {}",
                base.display()
            )))?;
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("tmp")).map_err(io_err("creating tmp/"))?;
        let mut db = MariaDb {
            name,
            server_id,
            gtid_domain_id: b.gtid_domain_id,
            startup_timeout: b.startup_timeout,
            bins,
            root,
            dir: Some(dir),
            port: match b.port {
                Some(port) => lease_fixed(port)?,
                None => lease_port()?,
            },
            proc: Mutex::new(Proc {
                child: None,
                args: b.start_args(),
            }),
        };
        // From here on, an error or a cancelled future drops `db`, which kills
        // the process and removes the directory.
        let mut attempt = 1;
        loop {
            let datadir = db.datadir();
            let from = template.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                if datadir.exists() {
                    fs::remove_dir_all(&datadir)?;
                }
                copy_dir(&from, &datadir)
            })
            .await
            .map_err(|e| TestkitError::Config(format!("copy task failed: {e}")))?
            .map_err(io_err("copying the template data directory"))?;
            fs::write(db.cnf_path(), db.render_cnf(&b)).map_err(io_err("writing my.cnf"))?;
            match db.spawn_and_wait(false).await {
                Err(TestkitError::PortInUse { .. })
                    if attempt < PORT_ATTEMPTS && b.port.is_none() =>
                {
                    attempt += 1;
                    db.port = lease_port()?;
                }
                Err(TestkitError::PortInUse {
                    name,
                    port,
                    log_tail,
                    ..
                }) => {
                    return Err(TestkitError::PortInUse {
                        name,
                        port,
                        attempts: attempt,
                        log_tail,
                    });
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(db),
            }
        }
    }

    fn render_cnf(&self, b: &Builder) -> String {
        let mut s = String::new();
        let p = |path: PathBuf| path.display().to_string();
        let _ = writeln!(s, "# Written by testkit for instance `{}`.", self.name);
        let _ = writeln!(
            s,
            "# A root shell: mariadb --defaults-file={}",
            p(self.cnf_path())
        );
        let _ = writeln!(
            s,
            "[client]\nuser={ROOT_USER}\nsocket={}\nport={}\n",
            p(self.socket()),
            self.port()
        );
        let _ = writeln!(s, "[mysqld]");
        let _ = writeln!(s, "datadir={}", p(self.datadir()));
        let _ = writeln!(s, "tmpdir={}", p(self.root.join("tmp")));
        let _ = writeln!(s, "socket={}", p(self.socket()));
        let _ = writeln!(s, "pid-file={}", p(self.root.join("mysqld.pid")));
        let _ = writeln!(s, "log_error={}", p(self.error_log()));
        let _ = writeln!(s, "port={}", self.port());
        let _ = writeln!(s, "bind-address=127.0.0.1");
        let _ = writeln!(s, "skip-name-resolve");
        let _ = writeln!(s, "server_id={}", self.server_id);
        let _ = writeln!(s, "gtid_domain_id={}", self.gtid_domain_id);
        let _ = writeln!(s, "\n# Durability and replication (design brief)");
        if b.log_bin {
            let _ = writeln!(s, "log_bin=mysql-bin\nlog_bin_index=mysql-bin.index");
        } else {
            let _ = writeln!(s, "skip-log-bin");
        }
        let _ = writeln!(s, "relay_log=relay-bin\nrelay_log_index=relay-bin.index");
        let _ = writeln!(
            s,
            "log_slave_updates={}",
            if b.log_slave_updates { "ON" } else { "OFF" }
        );
        let _ = writeln!(s, "sync_binlog=1");
        let _ = writeln!(s, "innodb_flush_log_at_trx_commit=1");
        let _ = writeln!(s, "binlog_format=ROW");
        let _ = writeln!(s, "gtid_strict_mode=1");
        let _ = writeln!(s, "max_allowed_packet=1G");
        let _ = writeln!(s, "slave_max_allowed_packet=1G");
        if b.semi_sync_master {
            let _ = writeln!(s, "\n# Lossless semi-sync master");
            let _ = writeln!(s, "rpl_semi_sync_master_enabled=ON");
            let _ = writeln!(s, "rpl_semi_sync_master_wait_point=AFTER_SYNC");
            let _ = writeln!(s, "rpl_semi_sync_master_wait_no_slave=ON");
            let _ = writeln!(s, "rpl_semi_sync_master_timeout={SEMI_SYNC_TIMEOUT_MS}");
        }
        let _ = writeln!(s, "\n# Small and quick, for tests");
        let _ = writeln!(s, "performance_schema=OFF");
        for arg in template::BASE_INSTALL_ARGS {
            // "--innodb-buffer-pool-size=64M" -> "innodb-buffer-pool-size=64M"
            let _ = writeln!(s, "{}", arg.trim_start_matches("--"));
        }
        let _ = writeln!(s, "innodb_buffer_pool_load_at_startup=OFF");
        let _ = writeln!(s, "innodb_buffer_pool_dump_at_shutdown=OFF");
        let _ = writeln!(s, "character_set_server=utf8mb4");
        let _ = writeln!(s, "collation_server=utf8mb4_general_ci");
        if !b.cnf_lines.is_empty() {
            let _ = writeln!(s, "\n# From the test");
            for line in &b.cnf_lines {
                let _ = writeln!(s, "{line}");
            }
        }
        s
    }

    fn lock(&self) -> MutexGuard<'_, Proc> {
        self.proc
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn child_state(&self) -> Result<ChildState> {
        let mut proc = self.lock();
        let Some(child) = proc.child.as_mut() else {
            return Ok(ChildState::Absent);
        };
        match child.try_wait().map_err(io_err("checking on mariadbd"))? {
            None => Ok(ChildState::Running(child.id())),
            Some(status) => {
                proc.child = None;
                Ok(ChildState::Exited(status))
            }
        }
    }

    fn running_pid(&self) -> Result<u32> {
        match self.child_state()? {
            ChildState::Running(pid) => Ok(pid),
            _ => Err(TestkitError::NotRunning {
                name: self.name.clone(),
            }),
        }
    }

    /// Polls until the process is gone; `false` if it still runs at the deadline.
    async fn wait_gone(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if !matches!(self.child_state()?, ChildState::Running(_)) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_tail(&self, log_from: u64, stderr_from: u64) -> String {
        let mut tail = tail_from(&self.error_log(), log_from, TAIL_LINES);
        let stderr = tail_from(&self.root.join("stderr.log"), stderr_from, TAIL_LINES);
        if !stderr.trim().is_empty() {
            tail.push_str("\n--- stderr ---\n");
            tail.push_str(&stderr);
        }
        tail
    }

    /// Starts the process with the stored arguments and waits until it answers.
    async fn spawn_and_wait(&self, restart: bool) -> Result<()> {
        let stderr_path = self.root.join("stderr.log");
        let (log_from, stderr_from) = (file_len(&self.error_log()), file_len(&stderr_path));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .map_err(io_err(format!("opening {}", stderr_path.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err("duplicating a file handle"))?;
        let mut cmd = Command::new(&self.bins.mariadbd);
        cmd.arg(format!("--defaults-file={}", self.cnf_path().display()));
        if is_root() {
            cmd.arg("--user=root");
        }
        if restart {
            // The port is fixed now: give a lingering holder a moment.
            cmd.arg("--port-open-timeout=10");
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        {
            let mut proc = self.lock();
            cmd.args(&proc.args);
            let child =
                spawn(cmd).map_err(io_err(format!("starting {}", self.bins.mariadbd.display())))?;
            proc.child = Some(child);
        }
        self.wait_ready(log_from, stderr_from).await
    }

    async fn wait_ready(&self, log_from: u64, stderr_from: u64) -> Result<()> {
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            match self.child_state()? {
                ChildState::Running(_) => {}
                ChildState::Exited(status) => {
                    let log_tail = self.log_tail(log_from, stderr_from);
                    if port_in_use(&log_tail) {
                        return Err(TestkitError::PortInUse {
                            name: self.name.clone(),
                            port: self.port(),
                            attempts: 1,
                            log_tail,
                        });
                    }
                    return Err(TestkitError::Exited {
                        name: self.name.clone(),
                        status: status.to_string(),
                        log: self.error_log(),
                        log_tail,
                    });
                }
                ChildState::Absent => {
                    return Err(TestkitError::NotRunning {
                        name: self.name.clone(),
                    });
                }
            }
            let last_error = match tokio::time::timeout(PROBE_TIMEOUT, self.probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
            };
            if Instant::now() >= deadline {
                if let Ok(pid) = self.running_pid() {
                    signal(pid, libc::SIGKILL);
                    let _ = self.wait_gone(Duration::from_secs(30)).await;
                }
                return Err(TestkitError::StartTimeout {
                    name: self.name.clone(),
                    port: self.port(),
                    timeout: self.startup_timeout,
                    last_error,
                    log: self.error_log(),
                    log_tail: self.log_tail(log_from, stderr_from),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One readiness check: a TCP connection as root and `SELECT 1`, from
    /// the server that owns our socket (not some other server that took the port).
    async fn probe(&self) -> std::result::Result<(), String> {
        let mut conn = Conn::new(self.opts()).await.map_err(|e| e.to_string())?;
        let row: Option<(i64, String)> = conn
            .query_first("SELECT 1, @@socket")
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        match row {
            Some((1, socket)) if Path::new(&socket) == self.socket() => Ok(()),
            Some((_, socket)) => Err(format!(
                "port {} is answered by another server (socket {socket})",
                self.port()
            )),
            None => Err("SELECT 1 returned no row".into()),
        }
    }

    // ----- accessors -----

    /// The instance's name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port on 127.0.0.1 (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port.port()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// The server's `server_id` as configured (`SET GLOBAL server_id` does not change this).
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// The configured `gtid_domain_id`.
    pub fn gtid_domain_id(&self) -> u32 {
        self.gtid_domain_id
    }

    /// The instance directory (holds `my.cnf`, `data/`, logs, the socket).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The data directory (`<dir>/data`; binary logs are `data/mysql-bin.*`).
    pub fn datadir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("mysqld.sock")
    }

    /// `my.cnf`.
    pub fn cnf_path(&self) -> PathBuf {
        self.root.join("my.cnf")
    }

    /// The text of `my.cnf`.
    pub fn cnf_text(&self) -> Result<String> {
        fs::read_to_string(self.cnf_path()).map_err(io_err("reading my.cnf"))
    }

    /// The server's error log (appended to across restarts).
    pub fn error_log(&self) -> PathBuf {
        self.root.join("error.log")
    }

    /// The last `lines` lines of the error log.
    pub fn error_log_tail(&self, lines: usize) -> String {
        tail_from(&self.error_log(), 0, lines)
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        match self.child_state() {
            Ok(ChildState::Running(pid)) => Some(pid),
            _ => None,
        }
    }

    /// Whether the process is alive (also when SIGSTOPped).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// `mysql://root@127.0.0.1:<port>` (root has no password).
    ///
    /// mysql_async given this URL reconnects through the Unix socket
    /// (`prefer_socket` defaults to true). Add `?prefer_socket=false`, or use
    /// [`MariaDb::opts`], when the TCP path matters, and always when the
    /// URL points at a proxy: the client would ask the backend for its
    /// socket and bypass the proxy.
    pub fn url(&self) -> String {
        format!("mysql://{ROOT_USER}@127.0.0.1:{}", self.port())
    }

    /// `mysql://<user>:<password>@127.0.0.1:<port>` (see [`MariaDb::url`]).
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!("mysql://{user}:{password}@127.0.0.1:{}", self.port())
    }

    /// Connection options for root over TCP (`prefer_socket=false`).
    pub fn opts(&self) -> Opts {
        self.opts_for(ROOT_USER, None)
    }

    /// Connection options for another account over TCP (`prefer_socket=false`).
    pub fn opts_for(&self, user: &str, password: Option<&str>) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port())
            .user(Some(user))
            .pass(password)
            .prefer_socket(false)
            .into()
    }

    // ----- SQL helpers (each opens and closes its own connection) -----

    /// A new root connection over TCP.
    ///
    /// There is no connect timeout: against a SIGSTOPped server it waits;
    /// wrap it in `tokio::time::timeout` where that can happen.
    pub async fn conn(&self) -> Result<Conn> {
        Ok(Conn::new(self.opts()).await?)
    }

    /// A new connection as `user` over TCP.
    pub async fn conn_as(&self, user: &str, password: &str) -> Result<Conn> {
        Ok(Conn::new(self.opts_for(user, Some(password))).await?)
    }

    /// Runs statements as root, discarding results (several `;`-separated
    /// statements are fine).
    pub async fn exec(&self, sql: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        let result = conn.query_drop(sql).await;
        let _ = conn.disconnect().await;
        Ok(result?)
    }

    /// The first row of a query as `T`: a single value (`i64`, `String`,
    /// `Option<String>`, ...) or a tuple. [`TestkitError::NoRow`] if empty.
    pub async fn query_one<T: FromRow>(&self, sql: &str) -> Result<T> {
        self.query_opt(sql)
            .await?
            .ok_or_else(|| TestkitError::NoRow {
                sql: sql.to_string(),
            })
    }

    /// The first row of a query as `T`, `None` if there is none.
    pub async fn query_opt<T: FromRow>(&self, sql: &str) -> Result<Option<T>> {
        let mut conn = self.conn().await?;
        let result = conn.query_first::<Row, _>(sql).await;
        let _ = conn.disconnect().await;
        match result? {
            None => Ok(None),
            Some(row) => convert(sql, row).map(Some),
        }
    }

    /// All rows of a query.
    pub async fn query_rows<T: FromRow>(&self, sql: &str) -> Result<Vec<T>> {
        let mut conn = self.conn().await?;
        let result = conn.query::<Row, _>(sql).await;
        let _ = conn.disconnect().await;
        result?.into_iter().map(|row| convert(sql, row)).collect()
    }

    /// `@@GLOBAL.gtid_binlog_pos` (empty on a fresh instance).
    pub async fn gtid_binlog_pos(&self) -> Result<String> {
        self.query_one("SELECT @@GLOBAL.gtid_binlog_pos").await
    }

    /// `@@GLOBAL.gtid_current_pos`.
    pub async fn gtid_current_pos(&self) -> Result<String> {
        self.query_one("SELECT @@GLOBAL.gtid_current_pos").await
    }

    /// `@@GLOBAL.gtid_slave_pos`.
    pub async fn gtid_slave_pos(&self) -> Result<String> {
        self.query_one("SELECT @@GLOBAL.gtid_slave_pos").await
    }

    /// A global system variable as text, as `SHOW GLOBAL VARIABLES` prints it
    /// (booleans read `ON`/`OFF`; NULL reads as an empty string).
    pub async fn variable(&self, name: &str) -> Result<String> {
        self.named_value(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME = UPPER(?)",
            "system variable",
            name,
        )
        .await
    }

    /// A global status variable as text (e.g. `Rpl_semi_sync_master_clients`).
    pub async fn status_var(&self, name: &str) -> Result<String> {
        self.named_value(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = UPPER(?)",
            "status variable",
            name,
        )
        .await
    }

    /// A global status variable as a number.
    pub async fn status_u64(&self, name: &str) -> Result<u64> {
        let text = self.status_var(name).await?;
        text.trim().parse().map_err(|e| TestkitError::Conversion {
            sql: format!("status variable {name}"),
            message: format!("{text:?} is not a number: {e}"),
        })
    }

    async fn named_value(
        &self,
        sql: &'static str,
        kind: &'static str,
        name: &str,
    ) -> Result<String> {
        let mut conn = self.conn().await?;
        let result = conn.exec_first::<Option<String>, _, _>(sql, (name,)).await;
        let _ = conn.disconnect().await;
        match result? {
            Some(value) => Ok(value.unwrap_or_default()),
            None => Err(TestkitError::UnknownVariable {
                kind,
                name: name.to_string(),
            }),
        }
    }

    /// Makes this server a replica of `127.0.0.1:<port>` as [`crate::REPL_USER`]
    /// with `MASTER_USE_GTID=slave_pos`, and starts it. (A former master's own
    /// transactions are in `gtid_binlog_pos`, not `gtid_slave_pos`: pick the
    /// mode knowingly in failover tests, with your own CHANGE MASTER.)
    pub async fn replicate_from_port(&self, port: u16) -> Result<()> {
        self.exec(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={port}, \
             MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', \
             MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos; START SLAVE"
        ))
        .await
    }

    /// [`MariaDb::replicate_from_port`] with `master`'s port.
    pub async fn replicate_from(&self, master: &MariaDb) -> Result<()> {
        self.replicate_from_port(master.port()).await
    }

    /// Waits (`MASTER_GTID_WAIT`) until this replica has applied `pos`.
    pub async fn wait_for_gtid(&self, pos: &str, timeout: Duration) -> Result<()> {
        let mut conn = self.conn().await?;
        let result = conn
            .exec_first::<i64, _, _>(
                "SELECT MASTER_GTID_WAIT(?, ?)",
                (pos, timeout.as_secs_f64()),
            )
            .await;
        let _ = conn.disconnect().await;
        match result? {
            Some(0) => Ok(()),
            _ => Err(TestkitError::GtidWaitTimeout {
                name: self.name.clone(),
                pos: pos.to_string(),
                timeout,
            }),
        }
    }

    // ----- process control -----

    /// Clean stop: SIGTERM (after SIGCONT, in case it was stopped) and wait
    /// for exit; SIGKILL and [`TestkitError::StopTimeout`] after 60 s.
    pub async fn stop(&self) -> Result<()> {
        let pid = self.running_pid()?;
        signal(pid, libc::SIGCONT);
        signal(pid, libc::SIGTERM);
        if self.wait_gone(STOP_TIMEOUT).await? {
            return Ok(());
        }
        if let Ok(pid) = self.running_pid() {
            signal(pid, libc::SIGKILL);
        }
        self.wait_gone(Duration::from_secs(30)).await?;
        Err(TestkitError::StopTimeout {
            name: self.name.clone(),
            timeout: STOP_TIMEOUT,
        })
    }

    /// SIGKILL, like a crash or a power cut of the process (the page cache
    /// survives: what was written but not fsynced is not lost). Waits until
    /// the process is gone.
    pub async fn kill9(&self) -> Result<()> {
        let pid = self.running_pid()?;
        signal(pid, libc::SIGKILL);
        if self.wait_gone(Duration::from_secs(30)).await? {
            Ok(())
        } else {
            Err(TestkitError::StopTimeout {
                name: self.name.clone(),
                timeout: Duration::from_secs(30),
            })
        }
    }

    /// Freezes the process (SIGSTOP): it holds its connections but answers nothing.
    pub fn sigstop(&self) -> Result<()> {
        signal(self.running_pid()?, libc::SIGSTOP);
        Ok(())
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn sigcont(&self) -> Result<()> {
        signal(self.running_pid()?, libc::SIGCONT);
        Ok(())
    }

    /// Starts the stopped or killed server again: same directory, port and
    /// `my.cnf`, same arguments as the last start. Waits until it answers.
    pub async fn start_again(&self) -> Result<()> {
        if let ChildState::Running(pid) = self.child_state()? {
            return Err(TestkitError::AlreadyRunning {
                name: self.name.clone(),
                pid,
            });
        }
        self.spawn_and_wait(true).await
    }

    /// [`MariaDb::start_again`] with other command-line arguments (they
    /// replace the builder's and stay for later restarts), e.g.
    /// [`crate::REPLICA_MODE_ARGS`] to restart a former master as a replica,
    /// or `&[]` for a plain master start.
    pub async fn start_again_with<S: AsRef<str>>(&self, args: &[S]) -> Result<()> {
        if let ChildState::Running(pid) = self.child_state()? {
            return Err(TestkitError::AlreadyRunning {
                name: self.name.clone(),
                pid,
            });
        }
        self.lock().args = args.iter().map(|s| s.as_ref().to_string()).collect();
        self.spawn_and_wait(true).await
    }

    /// The arguments the next (re)start passes after `--defaults-file`.
    pub fn start_args(&self) -> Vec<String> {
        self.lock().args.clone()
    }
}

fn convert<T: FromRow>(sql: &str, row: Row) -> Result<T> {
    mysql_async::from_row_opt(row).map_err(|e| TestkitError::Conversion {
        sql: sql.to_string(),
        message: format!("{e}"),
    })
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let proc = self
            .proc
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut child) = proc.child.take() {
            let pid = child.id();
            signal(pid, libc::SIGCONT);
            signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + DROP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        let keep = std::env::var_os(ENV_KEEP).is_some_and(|v| !v.is_empty() && v != "0");
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                let _ = fs::write(path.join(KEEP_MARKER), "kept because TESTKIT_KEEP is set\n");
                eprintln!(
                    "testkit: kept `{}` (port {}) in {} ({ENV_KEEP} is set); root shell: mariadb --defaults-file={}",
                    self.name,
                    self.port(),
                    path.display(),
                    path.join("my.cnf").display()
                );
            } else if let Err(e) = dir.close() {
                eprintln!("testkit: could not remove {}: {e}", self.root.display());
            }
        }
    }
}
