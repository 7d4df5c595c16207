//! The template data directory: `mariadb-install-db` runs once per MariaDB
//! build and option set (shared by all test processes through
//! `<base>/templates/<key>/`), and every instance starts from a copy of it.
//! A copy takes a few tens of milliseconds; an install about half a second
//! warm and several seconds on a cold cache.

use std::fs::{self, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError, io_err};
use crate::paths::{Binaries, tail_from};
use crate::spawner::{is_root, spawn};
use crate::{APP_PASSWORD, APP_USER, REPL_PASSWORD, REPL_USER};

/// Bump when the template's content changes (setup SQL, install options).
const TEMPLATE_VERSION: &str = "testkit-template-3";
const READY: &str = "READY";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);

/// Options passed to `mariadb-install-db` before the builder's own.
pub(crate) const BASE_INSTALL_ARGS: &[&str] = &[
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=32M",
];

/// Runs inside the bootstrap (no binary log there, so no GTID is used up).
///
/// - root: `mariadb-install-db --auth-root-authentication-method=normal`
///   creates root@localhost, root@127.0.0.1, root@::1 (and root@<hostname>)
///   without a password; the hostname one is dropped (it only draws warnings
///   under skip-name-resolve).
/// - `repl`: what a replica (or our binlog server) needs on a master.
/// - `app`: an application account. It lacks SUPER and READ ONLY ADMIN, so
///   `read_only=ON` stops it. `root` (ALL PRIVILEGES) has READ ONLY ADMIN in
///   MariaDB 10.11 and writes through `read_only`.
/// - database `test` (install-db is run with `--skip-test-db`, which also
///   skips the anonymous grants on `test%`).
fn setup_sql() -> String {
    format!(
        "DELETE FROM mysql.global_priv WHERE User='root' AND Host NOT IN ('localhost','127.0.0.1','::1');\n\
         DELETE FROM mysql.proxies_priv WHERE User='root' AND Host NOT IN ('localhost','127.0.0.1','::1');\n\
         DELETE FROM mysql.global_priv WHERE User='';\n\
         FLUSH PRIVILEGES;\n\
         CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}';\n\
         GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{REPL_USER}'@'%';\n\
         CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}';\n\
         GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, REFERENCES, \
         CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, \
         ALTER ROUTINE, EVENT, TRIGGER, PROCESS, SHOW DATABASES ON *.* TO '{APP_USER}'@'%';\n\
         CREATE DATABASE test;\n"
    )
}

fn stamp(h: &mut DefaultHasher, p: &Path) {
    p.hash(h);
    if let Ok(m) = fs::metadata(p) {
        m.len().hash(h);
        if let Ok(t) = m.modified() {
            t.hash(h);
        }
    }
}

fn key(bins: &Binaries, install_args: &[String]) -> String {
    let mut h = DefaultHasher::new();
    TEMPLATE_VERSION.hash(&mut h);
    setup_sql().hash(&mut h);
    BASE_INSTALL_ARGS.hash(&mut h);
    install_args.hash(&mut h);
    is_root().hash(&mut h);
    stamp(&mut h, &bins.mariadbd);
    stamp(&mut h, &bins.install_db);
    format!("{:016x}", h.finish())
}

/// Returns the template data directory for these install options, creating
/// it if needed. Blocking (call it from a blocking thread).
pub(crate) fn ensure(bins: &Binaries, base: &Path, install_args: &[String]) -> Result<PathBuf> {
    let dir = base.join("templates");
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let key = key(bins, install_args);
    let ready = dir.join(&key);
    if ready.join(READY).exists() {
        return Ok(ready.join("data"));
    }

    // One builder at a time, across processes; the others wait and reuse.
    let lock_path = dir.join(format!("{key}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("opening {}", lock_path.display())))?;
    loop {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io_err(format!("locking {}", lock_path.display()))(e));
        }
    }
    if ready.join(READY).exists() {
        return Ok(ready.join("data"));
    }

    let build = dir.join(format!("{key}.build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build).map_err(io_err(format!("creating {}", build.display())))?;
    let sql = build.join("setup.sql");
    fs::write(&sql, setup_sql()).map_err(io_err(format!("writing {}", sql.display())))?;
    let log = build.join("install.log");
    install(bins, &build.join("data"), &sql, &log, install_args)?;
    fs::write(build.join(READY), format!("{TEMPLATE_VERSION}\n"))
        .map_err(io_err("writing the READY marker"))?;
    if ready.exists() {
        fs::remove_dir_all(&ready)
            .map_err(io_err(format!("removing the stale {}", ready.display())))?;
    }
    fs::rename(&build, &ready).map_err(io_err(format!(
        "renaming {} to {}",
        build.display(),
        ready.display()
    )))?;
    drop(lock);
    Ok(ready.join("data"))
}

fn install(
    bins: &Binaries,
    datadir: &Path,
    sql: &Path,
    log: &Path,
    install_args: &[String],
) -> Result<()> {
    let out = fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err("duplicating a file handle"))?;
    let mut cmd = Command::new(&bins.install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .arg(format!("--extra-file={}", sql.display()));
    if is_root() {
        cmd.arg("--user=root");
    }
    cmd.args(BASE_INSTALL_ARGS).args(install_args);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = spawn(cmd).map_err(io_err(format!("running {}", bins.install_db.display())))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let status = loop {
        match child
            .try_wait()
            .map_err(io_err("waiting for mariadb-install-db"))?
        {
            Some(status) if status.success() => return Ok(()),
            Some(status) => break status.to_string(),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break format!("timed out after {INSTALL_TIMEOUT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Err(TestkitError::InstallDb {
        status,
        log: log.to_path_buf(),
        log_tail: tail_from(log, 0, 30),
    })
}
