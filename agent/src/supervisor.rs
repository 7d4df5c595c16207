//! Supervising the local `mariadbd`: the agent starts it (initialising an
//! empty data directory first), restarts it when it dies, restarts it to
//! roll back commits a demoted master left waiting for an ACK, and stops it
//! on shutdown.
//!
//! Every start is as a replica: read-only, `--init-rpl-role=SLAVE` (MariaDB
//! then truncates binlog transactions no replica acknowledged and rolls them
//! back in InnoDB), `--skip-slave-start` (the agent points replication at
//! the binlog server itself, from the right position). Only the agent's
//! promotion makes it writable.
//!
//! The child gets `PR_SET_PDEATHSIG = SIGKILL`: when `phxbinlogsvr` dies,
//! its `mariadbd` dies with it, so a master whose binlog server is gone
//! cannot stay writable. (The signal follows the *thread* that forked, so
//! every spawn goes through one thread that lives as long as the process.)

use std::fmt::Write as _;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How to run this node's `mariadbd`.
#[derive(Clone)]
pub struct LaunchConfig {
    /// The server binary (`mariadb.binary`).
    pub binary: PathBuf,
    /// `mariadb-install-db`, to initialise an empty data directory.
    pub install_db: PathBuf,
    /// The data directory (`mariadb_datadir`).
    pub datadir: PathBuf,
    /// Where the generated `mariadb.cnf`, the socket, the pid file and the
    /// error log go (the node's `data_dir`).
    pub run_dir: PathBuf,
    pub bind: std::net::IpAddr,
    pub port: u16,
    /// The replica `server_id` (every start is as a replica).
    pub server_id: u32,
    /// `mariadb.options` of the cluster file.
    pub options: Vec<(String, Option<String>)>,
    /// SQL run once when the data directory is initialised: the cluster's
    /// accounts. Holds secrets: never logged.
    pub init_sql: String,
    /// `proxy_protocol_networks`: the addresses whose PROXY protocol
    /// header MariaDB believes (the cluster's proxies); empty: none.
    pub proxy_protocol_networks: Vec<String>,
}

impl std::fmt::Debug for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchConfig")
            .field("binary", &self.binary)
            .field("datadir", &self.datadir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The command-line flags of every start (design brief, "The old master").
pub const REPLICA_START_ARGS: [&str; 3] = [
    "--init-rpl-role=SLAVE",
    "--rpl-semi-sync-slave-enabled=ON",
    "--skip-slave-start",
];

/// Longest `mariadb-install-db` run.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

static SPAWNER: OnceLock<io::Result<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// Spawns `cmd` from the process-long spawner thread, with
/// `PR_SET_PDEATHSIG = SIGKILL`.
fn spawn_tied(cmd: Command) -> io::Result<Child> {
    let slot = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("mariadbd-spawner".into())
            .spawn(move || {
                for SpawnRequest { mut cmd, reply } in rx {
                    let parent = std::process::id();
                    // SAFETY: between fork and exec the closure only calls
                    // async-signal-safe functions (prctl, getppid).
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::prctl(
                                libc::PR_SET_PDEATHSIG,
                                libc::SIGKILL as libc::c_ulong,
                                0,
                                0,
                                0,
                            ) != 0
                            {
                                return Err(io::Error::last_os_error());
                            }
                            if libc::getppid() as u32 != parent {
                                return Err(io::Error::other("parent exited before exec"));
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
    });
    let tx = slot
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("no spawner thread: {e}")))?;
    let (reply, answer) = mpsc::sync_channel(1);
    tx.send(SpawnRequest { cmd, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))?
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("mariadb-install-db failed ({status}); its log, {log}, ends with:\n{tail}")]
    Install {
        status: String,
        log: PathBuf,
        tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io { what, source }
}

/// In a data directory restored from a backup: the backup's GTID position
/// (a backup carries no binary log, so MariaDB would not know it).
pub const RESTORED_GTID_FILE: &str = "phxsql-restored-gtid";

/// The local `mariadbd` process.
#[derive(Debug)]
pub struct Supervisor {
    cfg: LaunchConfig,
    child: Mutex<Option<Child>>,
}

impl Supervisor {
    pub fn new(cfg: LaunchConfig) -> Self {
        Supervisor {
            cfg,
            child: Mutex::new(None),
        }
    }

    pub fn error_log(&self) -> PathBuf {
        self.cfg.run_dir.join("mariadb.err")
    }

    /// This node's own temporary directory. Never a shared /tmp: a starting
    /// mariadbd deletes every `#sql*` file in its tmpdir, which breaks the
    /// temporary tables of another server (or a mariadb-install-db) on the
    /// same machine.
    fn tmp_dir(&self) -> Result<PathBuf, SupervisorError> {
        let tmp = self.cfg.run_dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        Ok(tmp)
    }

    /// The GTID position a restored data directory was backed up at, left
    /// by a rebuild (`phxctl node rebuild`) in [`RESTORED_GTID_FILE`]; the agent adopts
    /// it (see `LocalMariaDb::adopt_restored_position`) and then calls
    /// [`Supervisor::restored_position_adopted`].
    pub fn restored_position(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.cfg.datadir.join(RESTORED_GTID_FILE)).ok()?;
        Some(text.trim().to_string())
    }

    pub fn restored_position_adopted(&self) {
        let _ = std::fs::remove_file(self.cfg.datadir.join(RESTORED_GTID_FILE));
    }

    fn cnf_path(&self) -> PathBuf {
        self.cfg.run_dir.join("mariadb.cnf")
    }

    /// Initialises the data directory if it holds no database yet (with the
    /// cluster's accounts). Blocking (seconds): call from a blocking task.
    /// Returns whether it did. A failed `mariadb-install-db` is tried once
    /// more before the error is returned.
    pub fn ensure_initialized(&self) -> Result<bool, SupervisorError> {
        if self.cfg.datadir.join("mysql").is_dir() {
            return Ok(false);
        }
        match self.install() {
            Err(e @ SupervisorError::Install { .. }) => {
                tracing::warn!(error = %e, "mariadb-install-db failed; trying once more");
                std::thread::sleep(Duration::from_secs(1));
                self.install()?;
            }
            other => other?,
        }
        Ok(true)
    }

    fn install(&self) -> Result<(), SupervisorError> {
        let c = &self.cfg;
        std::fs::create_dir_all(&c.run_dir)
            .map_err(io_err(format!("creating {}", c.run_dir.display())))?;
        let staging = c.datadir.with_extension("initialising");
        let _ = std::fs::remove_dir_all(&staging);
        let sql = c.run_dir.join("init.sql");
        write_private(&sql, &c.init_sql)?;
        let log = c.run_dir.join("install-db.log");
        let out =
            std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err("duplicating a file handle"))?;
        let tmp = self.tmp_dir()?;
        let mut cmd = Command::new(&c.install_db);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", staging.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--auth-root-authentication-method=socket")
            .arg("--skip-test-db")
            .arg("--skip-name-resolve")
            .arg(format!("--extra-file={}", sql.display()));
        if is_root() {
            cmd.arg("--user=root");
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        tracing::info!(datadir = %c.datadir.display(), "initialising the MariaDB data directory");
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("running {}", c.install_db.display())))?;
        let deadline = Instant::now() + INSTALL_TIMEOUT;
        let status = loop {
            match child
                .try_wait()
                .map_err(io_err("waiting for mariadb-install-db"))?
            {
                Some(s) => break s,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SupervisorError::Install {
                        status: format!("timed out after {INSTALL_TIMEOUT:?}"),
                        tail: tail_of(&log),
                        log,
                    });
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let _ = std::fs::remove_file(&sql);
        if !status.success() {
            return Err(SupervisorError::Install {
                status: status.to_string(),
                tail: tail_of(&log),
                log,
            });
        }
        // Atomic: a crash mid-install leaves no half-made data directory.
        std::fs::rename(&staging, &c.datadir).map_err(io_err(format!(
            "renaming {} to {}",
            staging.display(),
            c.datadir.display()
        )))?;
        Ok(())
    }

    /// The generated option file.
    fn cnf(&self) -> String {
        let c = &self.cfg;
        let p = |p: &Path| p.display().to_string();
        let mut s = String::from(
            "# Written by the phxsql agent at every start; edits are lost.\n[mariadbd]\n",
        );
        let _ = writeln!(s, "datadir={}", p(&c.datadir));
        let _ = writeln!(s, "socket={}", p(&c.run_dir.join("mariadb.sock")));
        let _ = writeln!(s, "pid-file={}", p(&c.run_dir.join("mariadb.pid")));
        let _ = writeln!(s, "log_error={}", p(&self.error_log()));
        let _ = writeln!(s, "tmpdir={}", p(&c.run_dir.join("tmp")));
        let _ = writeln!(s, "port={}", c.port);
        let _ = writeln!(s, "bind-address={}", c.bind);
        let _ = writeln!(s, "server_id={}", c.server_id);
        if !c.proxy_protocol_networks.is_empty() {
            let _ = writeln!(
                s,
                "proxy_protocol_networks={}",
                c.proxy_protocol_networks.join(",")
            );
        }
        s.push_str(
            "log_bin=phxsql-bin\nlog_bin_index=phxsql-bin.index\n\
             relay_log=relay-bin\nrelay_log_index=relay-bin.index\n\
             log_slave_updates=ON\nsync_binlog=1\ninnodb_flush_log_at_trx_commit=1\n\
             binlog_format=ROW\ngtid_strict_mode=1\nread_only=ON\n\
             max_allowed_packet=1G\nslave_max_allowed_packet=1G\n",
        );
        for (k, v) in &c.options {
            match v {
                Some(v) => {
                    let _ = writeln!(s, "{k}={v}");
                }
                None => {
                    let _ = writeln!(s, "{k}");
                }
            }
        }
        s
    }

    /// Starts `mariadbd` as a replica (see the module docs) unless it runs.
    pub fn start(&self) -> Result<(), SupervisorError> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            return Ok(());
        }
        self.tmp_dir()?;
        let cnf = self.cnf_path();
        write_private(&cnf, &self.cnf())?;
        let mut cmd = Command::new(&self.cfg.binary);
        cmd.arg(format!("--defaults-file={}", cnf.display()));
        if is_root() {
            cmd.arg("--user=root");
        }
        cmd.args(REPLICA_START_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let c =
            spawn_tied(cmd).map_err(io_err(format!("starting {}", self.cfg.binary.display())))?;
        tracing::info!(
            pid = c.id(),
            port = self.cfg.port,
            "mariadbd started (as a replica)"
        );
        *child = Some(c);
        Ok(())
    }

    /// Whether the `mariadbd` it started still runs (an exit is reaped and
    /// logged here).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                tracing::warn!(%status, log = %self.error_log().display(), "mariadbd exited");
                *child = None;
                false
            }
            Some(Err(_)) | None => false,
        }
    }

    /// SIGKILL (crash-safe settings: InnoDB and the binlog recover), reaped.
    pub fn kill(&self) {
        if let Some(mut c) = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `timeout`. Blocking.
    pub fn stop(&self, timeout: Duration) {
        let Some(mut c) = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: plain syscall on our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}

/// The last lines of a log file (for error messages).
fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Writes `text` to `path`, readable by the owner only (secrets).
fn write_private(path: &Path, text: &str) -> Result<(), SupervisorError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io_err(format!("writing {}", path.display())))
}
