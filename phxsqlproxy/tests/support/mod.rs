//! The harness of the proxy's end-to-end tests: three nodes on loopback,
//! each a real `mariadbd` (testkit, TLS on, PROXY headers accepted from
//! 127.0.0.1), a `phxbinlogsvr --agent` and a `phxsqlproxy`, all from one
//! cluster file. The agents elect a master; clients use the proxies' ports.
#![allow(dead_code)] // each test uses a part of it

#[path = "../../../phxbinlogsvr/tests/common/mod.rs"]
pub mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{
    ADMIN_PASSWORD, ADMIN_USER, Svr, create_admin_user, free_ports, http_get, wait_until,
};
use testkit::mysql_async::{self, Opts, OptsBuilder};
use testkit::{APP_PASSWORD, APP_USER, MariaDb, REPL_PASSWORD, REPL_USER};

pub const TOKEN: &str = "proxy-e2e-token";

/// One node's ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub paxos: u16,
    pub binlog: u16,
    pub admin: u16,
    pub rw: u16,
    pub ro: u16,
    pub proxy_admin: u16,
}

/// Knobs of a test cluster.
pub struct Setup {
    /// Which nodes run a proxy.
    pub proxies: [bool; 3],
    /// `proxy:` section of the cluster file (YAML flow mapping body).
    pub proxy_yaml: String,
    /// Extra mariadbd options of every node.
    pub mariadb_options: Vec<(String, String)>,
    /// Extra `phxsqlproxy` arguments.
    pub proxy_args: Vec<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            proxies: [true; 3],
            proxy_yaml: "connect_timeout: 2s, master_wait_timeout: 1s".into(),
            mariadb_options: Vec::new(),
            proxy_args: Vec::new(),
        }
    }
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct ProxyCluster {
    // Dropped in this order: proxies, binlog servers, MariaDB, files.
    pub proxies: Vec<Option<Svr>>,
    pub svrs: Vec<Svr>,
    pub dbs: Vec<Arc<MariaDb>>,
    pub ports: Vec<Ports>,
    pub cfg: PathBuf,
    proxy_args: Vec<String>,
    /// The CA (self-signed server certificate) clients verify against.
    pub ca: PathBuf,
    pub tmp: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server-cert.pem"), dir.join("server-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl) makes the test certificate");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

impl ProxyCluster {
    pub async fn start(name: &str, setup: Setup) -> ProxyCluster {
        let serial = SERIAL.lock().await;
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = make_cert(tmp.path());
        let builder = |n: usize| {
            let mut b = MariaDb::builder()
                .name(format!("{name}-n{n}"))
                .replica_mode(true)
                .option("read_only", "ON")
                .arg("--skip-slave-start")
                .option("proxy_protocol_networks", "127.0.0.1,localhost")
                .option("ssl_cert", cert.display())
                .option("ssl_key", key.display());
            for (k, v) in &setup.mariadb_options {
                b = b.option(k, v);
            }
            b.start()
        };
        let (m1, m2, m3) = tokio::join!(builder(1), builder(2), builder(3));
        let dbs = vec![
            Arc::new(m1.unwrap()),
            Arc::new(m2.unwrap()),
            Arc::new(m3.unwrap()),
        ];
        for db in &dbs {
            create_admin_user(db).await;
        }
        let ports: Vec<Ports> = free_ports(18)
            .chunks(6)
            .map(|c| Ports {
                paxos: c[0],
                binlog: c[1],
                admin: c[2],
                rw: c[3],
                ro: c[4],
                proxy_admin: c[5],
            })
            .collect();
        let mut y = String::from(
            "version: 1\ncluster_id: 5151\nname: proxy-e2e\nlease: {duration: 2s}\ncredentials:\n",
        );
        y += &format!("  replication: {{user: {REPL_USER}, password: \"{REPL_PASSWORD}\"}}\n");
        y += &format!("  mariadb_admin: {{user: {ADMIN_USER}, password: \"{ADMIN_PASSWORD}\"}}\n");
        y += &format!("  admin_api: {{token: \"{TOKEN}\"}}\n");
        y += &format!("proxy: {{{}}}\nnodes:\n", setup.proxy_yaml);
        for (i, (db, p)) in dbs.iter().zip(&ports).enumerate() {
            let n = i + 1;
            y += &format!(
                "  - {{name: node{n}, id: {n}, host: 127.0.0.1, paxos_port: {}, binlog_port: {}, admin_port: {}, \
                 proxy_rw_port: {}, proxy_ro_port: {}, proxy_admin_port: {}, mariadb_port: {}, data_dir: {}}}\n",
                p.paxos,
                p.binlog,
                p.admin,
                p.rw,
                p.ro,
                p.proxy_admin,
                db.port(),
                tmp.path().join(format!("node{n}")).display()
            );
        }
        let cfg = tmp.path().join("cluster.yaml");
        std::fs::write(&cfg, y).unwrap();
        let args = |n: usize| {
            vec![
                "--config".to_string(),
                cfg.display().to_string(),
                "--node".into(),
                format!("node{n}"),
            ]
        };
        let svrs: Vec<Svr> = (1..=3)
            .map(|n| {
                let mut a = args(n);
                a.push("--agent".into());
                Svr::spawn(
                    &format!("svr{n}"),
                    a,
                    tmp.path().join(format!("svr{n}.log")),
                )
            })
            .collect();
        let mut c = ProxyCluster {
            proxies: vec![None, None, None],
            svrs,
            dbs,
            ports,
            cfg,
            proxy_args: setup.proxy_args.clone(),
            ca: cert,
            tmp,
            _serial: serial,
        };
        for (i, on) in setup.proxies.iter().enumerate() {
            if *on {
                c.start_proxy(i);
            }
        }
        c
    }

    /// Starts node `i`'s proxy (0-based).
    pub fn start_proxy(&mut self, i: usize) {
        let cfg = self.cfg.clone();
        self.start_proxy_with_config(i, &cfg);
    }

    /// Starts node `i`'s proxy on its own copy of the cluster file.
    pub fn start_proxy_with_config(&mut self, i: usize, cfg: &Path) {
        let n = i + 1;
        let binary = match option_env!("CARGO_BIN_EXE_phxsqlproxy") {
            Some(p) => p.into(),
            None => common::workspace_binary("phxsqlproxy"),
        };
        self.proxies[i] = Some(Svr::spawn_binary(
            binary,
            &format!("proxy{n}"),
            [
                "--config".to_string(),
                cfg.display().to_string(),
                "--node".into(),
                format!("node{n}"),
            ]
            .into_iter()
            .chain(self.proxy_args.iter().cloned())
            .collect(),
            self.tmp.path().join(format!("proxy{n}.log")),
            Vec::new(),
        ));
    }

    /// `/route` of node `i`'s binlog server.
    pub async fn route(&self, i: usize) -> Option<serde_json::Value> {
        let (code, body) = http_get(self.ports[i].admin, "/route").await.ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// `/status` of node `i`'s proxy.
    pub async fn proxy_status(&self, i: usize) -> Option<serde_json::Value> {
        let (code, body) = http_get(self.ports[i].proxy_admin, "/status").await.ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Waits until a node is master (promotion done) and every running
    /// proxy routes writes to it; returns its index.
    pub async fn wait_master(&self, timeout: Duration) -> usize {
        let mut master = None;
        wait_until("a master every proxy routes to", timeout, async || {
            master = None;
            for i in 0..3 {
                if let Some(r) = self.route(i).await
                    && r["agent"]["role"] == "master"
                    && r["lease"]["master"] == (i + 1) as u64
                {
                    master = Some(i);
                }
            }
            let Some(m) = master else { return false };
            for i in 0..3 {
                if self.proxies[i].is_none() {
                    continue;
                }
                let routed = self
                    .proxy_status(i)
                    .await
                    .is_some_and(|s| s["rw_target"] == format!("node{}", m + 1));
                if !routed {
                    return false;
                }
            }
            true
        })
        .await;
        master.unwrap()
    }

    /// The application account through port `port` on 127.0.0.1.
    pub fn app_opts(&self, port: u16) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some(APP_USER))
            .pass(Some(APP_PASSWORD))
            .prefer_socket(false)
            .into()
    }

    pub async fn app_conn(&self, port: u16) -> mysql_async::Conn {
        mysql_async::Conn::new(self.app_opts(port)).await.unwrap()
    }
}

/// Runs the `mariadb` command-line client as the application user against
/// 127.0.0.1:`port` with `extra` options and `sql`; returns its output.
pub fn mariadb_cli(port: u16, extra: &[&str], sql: &str) -> Output {
    Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "--protocol=TCP",
            "-N",
            "-B",
        ])
        .arg(format!("-P{port}"))
        .arg(format!("-u{APP_USER}"))
        .arg(format!("-p{APP_PASSWORD}"))
        .args(extra)
        .args(["-e", sql])
        .output()
        .expect("the mariadb client (Debian package mariadb-client)")
}

/// [`mariadb_cli`] that must succeed; its standard output, trimmed.
pub fn mariadb_ok(port: u16, extra: &[&str], sql: &str) -> String {
    let out = mariadb_cli(port, extra, sql);
    assert!(
        out.status.success(),
        "mariadb -P{port} {extra:?} -e {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Python interpreter with PyMySQL (Debian's python3-pymysql goes with
/// /usr/bin/python3).
pub fn python() -> &'static str {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import pymysql"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p;
        }
    }
    panic!("no python3 with PyMySQL: apt-get install python3-pymysql (scripts/install-deps.sh)");
}
