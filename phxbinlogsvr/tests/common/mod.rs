//! The harness of the end-to-end tests (`cluster.rs`, `cluster_faults.rs`):
//! three nodes on loopback, each a real `mariadbd` (testkit) and a
//! `phxbinlogsvr` process.
//!
//! - node 1's MariaDB is a lossless semi-sync master (AFTER_SYNC, no
//!   fallback); nodes 2 and 3 start in replica mode and replicate from
//!   their own binlog server (`127.0.0.1:<binlog_port>`,
//!   `MASTER_USE_GTID=slave_pos`);
//! - node 1's binlog server is made the lease holder by starting nodes 2
//!   and 3 with `--no-campaign` (they vote and follow but never campaign;
//!   the agent will decide this properly).
//!
//! `RUST_LOG` is passed to the binlog servers; their logs are printed when
//! the test fails (`PHX_TEST_LOGS=1`: always).
#![allow(dead_code)] // each test file uses a part of it

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::mysql_async::Row;
use testkit::mysql_async::prelude::Queryable;
use testkit::{MariaDb, REPL_PASSWORD, REPL_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const ADMIN_USER: &str = "phxadmin";
pub const ADMIN_PASSWORD: &str = "admin-secret";

pub struct NodePorts {
    pub paxos: u16,
    pub binlog: u16,
    pub admin: u16,
    pub proxy_rw: u16,
    pub proxy_ro: u16,
    pub proxy_admin: u16,
}

/// The binlog servers' admin account on `db`, not binlogged (it must not
/// become a transaction of the log).
pub async fn create_admin_user(db: &MariaDb) {
    db.exec(&format!(
        "SET sql_log_bin=0; CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'; \
         GRANT ALL ON *.* TO '{ADMIN_USER}'@'%'"
    ))
    .await
    .unwrap();
}

/// Free ports for the binlog servers of `n` nodes.
pub fn node_ports(n: usize) -> Vec<NodePorts> {
    free_ports(6 * n)
        .chunks(6)
        .map(|c| NodePorts {
            paxos: c[0],
            binlog: c[1],
            admin: c[2],
            proxy_rw: c[3],
            proxy_ro: c[4],
            proxy_admin: c[5],
        })
        .collect()
}

/// Free ports: all listeners are held until every port is picked.
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// The `phxbinlogsvr` binary: this package's own when compiled in it, else
/// built on demand (other packages' tests include this file).
pub fn svr_binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_phxbinlogsvr") {
        Some(p) => p.into(),
        None => workspace_binary("phxbinlogsvr"),
    }
}

/// A binary of another workspace package (named like its package), built (or found up to date) by
/// `cargo build` once per test process, in this test binary's profile.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.iter().any(|b| b == name) {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", name, "--bin", name]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let ok = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cargo build --bin {name} failed");
        built.push(name.to_string());
    }
    let path = dir.join(name);
    assert!(path.is_file(), "{} missing after the build", path.display());
    path
}

/// A `phxbinlogsvr` (or other) process, killed on drop.
pub struct Svr {
    pub name: String,
    /// The executable.
    pub binary: PathBuf,
    /// Extra environment of the next starts.
    pub env: Vec<(String, String)>,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Svr {
    pub fn spawn(name: &str, args: Vec<String>, log: PathBuf) -> Svr {
        Svr::spawn_with_env(name, args, log, Vec::new())
    }

    /// [`Svr::spawn`] with extra environment variables (kept for restarts
    /// until `env` is changed).
    pub fn spawn_with_env(
        name: &str,
        args: Vec<String>,
        log: PathBuf,
        env: Vec<(String, String)>,
    ) -> Svr {
        Svr::spawn_binary(svr_binary(), name, args, log, env)
    }

    /// Runs `binary` (any of the project's daemons) the same way.
    pub fn spawn_binary(
        binary: PathBuf,
        name: &str,
        args: Vec<String>,
        log: PathBuf,
        env: Vec<(String, String)>,
    ) -> Svr {
        let mut s = Svr {
            name: name.into(),
            binary,
            env,
            args,
            log,
            child: None,
        };
        s.start();
        s
    }

    pub fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. "STOP", "CONT") with kill(1).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{signal} {pid}");
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Started and not exited (an exit is reaped here and reported).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                eprintln!("{} exited: {status}", self.name);
                false
            }
            Some(Err(_)) | None => false,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Svr {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("PHX_TEST_LOGS").is_some() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!("===== {} log (last {} lines) =====", self.name, tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// GET over HTTP/1.1 (Connection: close): (status code, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

pub async fn status_json(port: u16) -> Option<serde_json::Value> {
    let (code, body) = tokio::time::timeout(Duration::from_secs(5), http_get(port, "/status"))
        .await
        .ok()?
        .ok()?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Polls `f` every 100 ms until it holds; panics after `timeout`.
pub async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the binlog server with admin port `admin_port` holds the lease.
pub async fn wait_master(admin_port: u16, what: &str) {
    wait_until(what, Duration::from_secs(30), async || {
        status_json(admin_port)
            .await
            .is_some_and(|s| s["is_master"] == true)
    })
    .await;
}

pub async fn exec_within(db: &MariaDb, sql: &str, timeout: Duration) {
    let t0 = Instant::now();
    tokio::time::timeout(timeout, db.exec(sql))
        .await
        .unwrap_or_else(|_| panic!("commit did not return within {timeout:?}: {sql}"))
        .unwrap();
    eprintln!("{:>6} ms  {sql}", t0.elapsed().as_millis());
}

/// `CHECKSUM TABLE test.t`.
pub async fn checksum(db: &MariaDb) -> i64 {
    checksum_of(db, "test.t").await
}

/// `CHECKSUM TABLE <table>` (the table must exist).
pub async fn checksum_of(db: &MariaDb, table: &str) -> i64 {
    let rows: Vec<(String, Option<i64>)> = db
        .query_rows(&format!("CHECKSUM TABLE {table}"))
        .await
        .unwrap();
    rows[0]
        .1
        .unwrap_or_else(|| panic!("{table} does not exist on {}", db.name()))
}

/// `CHECKSUM TABLE` of every table in `tables` is the same on every node
/// as on the first one.
pub async fn assert_same_checksums(dbs: &[Arc<MariaDb>], tables: &[&str]) {
    for table in tables {
        let want = checksum_of(&dbs[0], table).await;
        for db in &dbs[1..] {
            assert_eq!(
                checksum_of(db, table).await,
                want,
                "CHECKSUM TABLE {table}: {} vs {}",
                dbs[0].name(),
                db.name()
            );
        }
    }
}

/// `SHOW SLAVE STATUS` as column name -> text (NULL: empty); empty if
/// the server is no replica.
pub async fn slave_status(db: &MariaDb) -> HashMap<String, String> {
    let mut conn = db.conn().await.unwrap();
    let row: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await.unwrap();
    conn.disconnect().await.unwrap();
    let Some(row) = row else {
        return HashMap::new();
    };
    let cols = row.columns();
    let mut out = HashMap::new();
    for (i, c) in cols.iter().enumerate() {
        let v: Option<String> = row.get_opt(i).and_then(|r| r.ok()).flatten();
        out.insert(c.name_str().into_owned(), v.unwrap_or_default());
    }
    out
}

/// The replica's threads run and neither has an error.
pub async fn assert_replica_healthy(db: &MariaDb) {
    let s = slave_status(db).await;
    let get = |k: &str| s.get(k).cloned().unwrap_or_default();
    assert_eq!(get("Slave_SQL_Running"), "Yes", "{}: {s:?}", db.name());
    assert_eq!(get("Slave_IO_Running"), "Yes", "{}: {s:?}", db.name());
    assert_eq!(get("Last_SQL_Errno"), "0", "{}: {s:?}", db.name());
    assert_eq!(get("Last_IO_Errno"), "0", "{}: {s:?}", db.name());
}

pub fn write_config(dir: &Path, dbs: &[Arc<MariaDb>], ports: &[NodePorts]) -> PathBuf {
    let mut y = String::from(
        "version: 1\ncluster_id: 4242\nname: e2e\nlease: {duration: 2s}\ncredentials:\n",
    );
    y += &format!("  replication: {{user: {REPL_USER}, password: \"{REPL_PASSWORD}\"}}\n");
    y += &format!("  mariadb_admin: {{user: {ADMIN_USER}, password: \"{ADMIN_PASSWORD}\"}}\n");
    y += "  admin_api: {token: \"e2e-token\"}\nnodes:\n";
    for (i, (db, p)) in dbs.iter().zip(ports).enumerate() {
        let n = i + 1;
        y += &format!(
            "  - {{name: node{n}, id: {n}, host: 127.0.0.1, paxos_port: {}, binlog_port: {}, admin_port: {}, \
             proxy_rw_port: {}, proxy_ro_port: {}, proxy_admin_port: {}, mariadb_port: {}, data_dir: {}}}\n",
            p.paxos,
            p.binlog,
            p.admin,
            p.proxy_rw,
            p.proxy_ro,
            p.proxy_admin,
            db.port(),
            dir.join(format!("node{n}")).display()
        );
    }
    let path = dir.join("cluster.yaml");
    fs::write(&path, y).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The clusters of these tests run one at a time (2-core machines; the
/// lossless checks are timing-sensitive).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three MariaDB servers and their binlog servers: node 1 the lossless
/// semi-sync master whose binlog server holds the lease (2 and 3 run with
/// `--no-campaign`), nodes 2 and 3 replicas of their own binlog server.
pub struct TestCluster {
    // Dropped in this order: the servers, then MariaDB, then the files.
    pub svrs: Vec<Svr>,
    pub dbs: Vec<Arc<MariaDb>>,
    pub ports: Vec<NodePorts>,
    _tmp: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl TestCluster {
    /// Starts it all; `name` prefixes the MariaDB instance names,
    /// `svr_args` are added to every binlog server's command line.
    pub async fn start(name: &str, svr_args: &[&str]) -> TestCluster {
        let serial = SERIAL.lock().await;
        let t_start = Instant::now();
        let tmp = tempfile::tempdir().unwrap();

        // MariaDB: node 1 a lossless semi-sync master, 2 and 3 replicas.
        let (m1, m2, m3) = tokio::join!(
            MariaDb::builder()
                .name(format!("{name}-n1"))
                .semi_sync_master(true)
                .start(),
            MariaDb::builder()
                .name(format!("{name}-n2"))
                .replica_mode(true)
                .start(),
            MariaDb::builder()
                .name(format!("{name}-n3"))
                .replica_mode(true)
                .start(),
        );
        let dbs = vec![
            Arc::new(m1.unwrap()),
            Arc::new(m2.unwrap()),
            Arc::new(m3.unwrap()),
        ];
        for db in &dbs {
            create_admin_user(db).await;
        }
        let ports = node_ports(3);
        let cfg = write_config(tmp.path(), &dbs, &ports);
        let svrs: Vec<Svr> = (1..=3)
            .map(|n| {
                let mut args = vec![
                    "--config".to_string(),
                    cfg.display().to_string(),
                    "--node".into(),
                    format!("node{n}"),
                ];
                if n != 1 {
                    args.push("--no-campaign".into());
                }
                args.extend(svr_args.iter().map(|a| a.to_string()));
                Svr::spawn(
                    &format!("node{n}"),
                    args,
                    tmp.path().join(format!("node{n}.log")),
                )
            })
            .collect();

        // Node 1 takes the lease.
        wait_master(ports[0].admin, "node1 to hold the lease").await;
        eprintln!("node1 is master after {:?}", t_start.elapsed());
        for p in &ports[1..] {
            let s = status_json(p.admin).await.expect("status of a follower");
            assert_eq!(s["is_master"], false);
            assert_eq!(s["lease"]["master"], 1, "{s}");
        }

        // Replicas follow their own binlog server.
        for (db, p) in dbs[1..].iter().zip(&ports[1..]) {
            db.replicate_from_port(p.binlog).await.unwrap();
        }
        TestCluster {
            svrs,
            dbs,
            ports,
            _tmp: tmp,
            _serial: serial,
        }
    }

    /// Node `n`'s (1-based) binlog server data directory.
    pub fn data_dir(&self, n: usize) -> PathBuf {
        self._tmp.path().join(format!("node{n}"))
    }

    /// Both replicas reach node 1's `gtid_binlog_pos`; returns it.
    pub async fn wait_replicas(&self, timeout: Duration) -> String {
        let target = self.dbs[0].gtid_binlog_pos().await.unwrap();
        eprintln!("node1 gtid_binlog_pos = {target}");
        for db in &self.dbs[1..] {
            if let Err(e) = db.wait_for_gtid(&target, timeout).await {
                panic!(
                    "{} did not reach {target}: {e}\nSHOW SLAVE STATUS: {:?}\n{}",
                    db.name(),
                    slave_status(db).await,
                    db.error_log_tail(30)
                );
            }
        }
        target
    }

    /// Every node's event store reaches `target` (a GTID position).
    pub async fn wait_stores(&self, target: &str) {
        for p in &self.ports {
            wait_until(
                "every store at node1's position",
                Duration::from_secs(30),
                async || {
                    status_json(p.admin)
                        .await
                        .is_some_and(|s| s["store"]["last_gtid_pos"] == target)
                },
            )
            .await;
        }
    }
}

/// A counter of node `port`'s `/metrics`.
pub async fn metric(port: u16, name: &str) -> u64 {
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics\n{metrics}"))
}
