//! The agent inside `phxbinlogsvr --agent`, end to end: three real MariaDB
//! servers that all start alike (as replicas, in replica mode), three binlog
//! servers that all campaign. The agents pick the roles: the lease holder's
//! MariaDB is promoted (semi-sync master, writable), the others are made
//! read-only replicas of their own binlog server. When the master's binlog
//! server dies, another node takes the lease, promotes its MariaDB and takes
//! writes; the old one, restarted, turns into a replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    ADMIN_PASSWORD, ADMIN_USER, NodePorts, Svr, assert_same_checksums, create_admin_user,
    free_ports, node_ports, status_json, wait_until, write_config,
};
use testkit::mysql_async::prelude::Queryable;
use testkit::{APP_PASSWORD, APP_USER, MariaDb};

/// Three nodes, every binlog server with `--agent` and campaigning.
struct AgentCluster {
    svrs: Vec<Svr>,
    dbs: Vec<Arc<MariaDb>>,
    ports: Vec<NodePorts>,
    _tmp: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// The clusters of this file run one at a time (2-core machines, 2 s leases).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl AgentCluster {
    async fn start(name: &str) -> AgentCluster {
        AgentCluster::start_with_env(name, &[]).await
    }

    /// Every binlog server with the environment `env` (until changed).
    async fn start_with_env(name: &str, env: &[(&str, &str)]) -> AgentCluster {
        let serial = SERIAL.lock().await;
        let tmp = tempfile::tempdir().unwrap();
        let (m1, m2, m3) = tokio::join!(
            MariaDb::builder()
                .name(format!("{name}-n1"))
                .replica_mode(true)
                .option("read_only", "ON")
                .arg("--skip-slave-start")
                .start(),
            MariaDb::builder()
                .name(format!("{name}-n2"))
                .replica_mode(true)
                .option("read_only", "ON")
                .arg("--skip-slave-start")
                .start(),
            MariaDb::builder()
                .name(format!("{name}-n3"))
                .replica_mode(true)
                .option("read_only", "ON")
                .arg("--skip-slave-start")
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
        let svrs = (1..=3)
            .map(|n| {
                Svr::spawn_with_env(
                    &format!("node{n}"),
                    vec![
                        "--config".into(),
                        cfg.display().to_string(),
                        "--node".into(),
                        format!("node{n}"),
                        "--agent".into(),
                        "--without-proxy".into(),
                    ],
                    tmp.path().join(format!("node{n}.log")),
                    env.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            })
            .collect();
        AgentCluster {
            svrs,
            dbs,
            ports,
            _tmp: tmp,
            _serial: serial,
        }
    }

    /// The agent's role on node `i` (0-based), if its status answers.
    async fn role(&self, i: usize) -> Option<String> {
        let s = status_json(self.ports[i].admin).await?;
        s["agent"]["role"].as_str().map(str::to_string)
    }

    /// Waits until exactly one of `among` is master by its agent (the
    /// others replicas) and returns it.
    async fn wait_one_master(&self, among: &[usize], timeout: Duration) -> usize {
        let mut master = None;
        wait_until("one promoted master", timeout, async || {
            let mut masters = Vec::new();
            let mut replicas = 0;
            for &i in among {
                match self.role(i).await.as_deref() {
                    Some("master") => masters.push(i),
                    Some("replica") => replicas += 1,
                    _ => {}
                }
            }
            if masters.len() == 1 && masters.len() + replicas == among.len() {
                master = masters.first().copied();
                true
            } else {
                false
            }
        })
        .await;
        master.expect("a master")
    }
}

async fn read_only(db: &MariaDb) -> bool {
    db.query_one::<i64>("SELECT @@read_only").await.unwrap() != 0
}

/// Commits one row as the application user; the commit's result.
async fn app_insert(db: &MariaDb, id: u64) -> Result<(), testkit::mysql_async::Error> {
    let mut c = db.conn_as(APP_USER, APP_PASSWORD).await.unwrap();
    c.query_drop(format!("INSERT INTO test.bank VALUES ({id}, 100)"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_pick_one_master_and_fail_over_when_its_binlog_server_dies() {
    let t0 = Instant::now();
    let mut c = AgentCluster::start("agent").await;
    let all = [0, 1, 2];
    let m = c.wait_one_master(&all, Duration::from_secs(60)).await;
    eprintln!("node{} promoted after {:?}", m + 1, t0.elapsed());

    // The master writable, the replicas not (for the application account).
    for i in all {
        let want = i != m;
        wait_until(
            "read_only set by the agent",
            Duration::from_secs(10),
            async || read_only(&c.dbs[i]).await == want,
        )
        .await;
    }
    c.dbs[m]
        .exec("CREATE TABLE test.bank (id INT PRIMARY KEY, balance INT NOT NULL)")
        .await
        .unwrap();
    for id in 1..=20 {
        tokio::time::timeout(Duration::from_secs(20), app_insert(&c.dbs[m], id))
            .await
            .expect("a commit on the master returns")
            .unwrap();
    }
    let replica = (m + 1) % 3;
    let refused = app_insert(&c.dbs[replica], 1000).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("read-only")),
        "a replica refuses the application's writes: {refused:?}"
    );
    let pos = c.dbs[m].gtid_binlog_pos().await.unwrap();
    for i in all.into_iter().filter(|&i| i != m) {
        c.dbs[i]
            .wait_for_gtid(&pos, Duration::from_secs(30))
            .await
            .unwrap();
    }
    assert_same_checksums(&c.dbs, &["test.bank"]).await;

    // The master's binlog server dies: another node takes over.
    let t_kill = Instant::now();
    c.svrs[m].kill();
    let others: Vec<usize> = all.into_iter().filter(|&i| i != m).collect();
    let m2 = c.wait_one_master(&others, Duration::from_secs(30)).await;
    wait_until(
        "the new master writable",
        Duration::from_secs(10),
        async || !read_only(&c.dbs[m2]).await,
    )
    .await;
    for id in 21..=40 {
        tokio::time::timeout(Duration::from_secs(20), app_insert(&c.dbs[m2], id))
            .await
            .expect("a commit on the new master returns")
            .unwrap();
        if id == 21 {
            eprintln!(
                "node{} took its first write {:?} after node{}'s binlog server was killed",
                m2 + 1,
                t_kill.elapsed(),
                m + 1
            );
        }
    }
    // The old master restarted: its agent makes it a replica again.
    c.svrs[m].start();
    wait_until(
        "the old master turns replica",
        Duration::from_secs(30),
        async || c.role(m).await.as_deref() == Some("replica"),
    )
    .await;
    assert!(read_only(&c.dbs[m]).await);
    // Server ids: a replica has its node's, each promotion a fresh one, so
    // no node replicates with the id of its own past transactions.
    let id = |i: usize| c.dbs[i].query_one::<u32>("SELECT @@server_id");
    let (id_old, id_new) = (id(m).await.unwrap(), id(m2).await.unwrap());
    assert_eq!(id_old, 1000 + m as u32 + 1, "the old master's replica id");
    assert!(id_new > 1_001_000, "a promoted master's id: {id_new}");
    let pos = c.dbs[m2].gtid_binlog_pos().await.unwrap();
    for i in all.into_iter().filter(|&i| i != m2) {
        if c.dbs[i]
            .wait_for_gtid(&pos, Duration::from_secs(15))
            .await
            .is_err()
        {
            eprintln!(
                "node{} slow: {:?} current_pos {:?} status {}",
                i + 1,
                common::slave_status(&c.dbs[i]).await,
                c.dbs[i].gtid_current_pos().await,
                status_json(c.ports[i].admin).await.unwrap_or_default()
            );
        }
        c.dbs[i]
            .wait_for_gtid(&pos, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| {
                panic!("node{} did not reach {pos}: {e}\n{:?}", i + 1, "see below")
            });
    }
    assert_same_checksums(&c.dbs, &["test.bank"]).await;
    let rows: i64 = c.dbs[m]
        .query_one("SELECT COUNT(*) FROM test.bank")
        .await
        .unwrap();
    assert_eq!(
        rows, 40,
        "every acknowledged insert is on the old master too"
    );
    // Exactly one master at the end.
    assert_eq!(c.wait_one_master(&all, Duration::from_secs(10)).await, m2);
}

/// POST with a JSON body and the test cluster's admin token: (status, body).
async fn http_post(port: u16, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer e2e-token\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_between_every_pair_of_nodes_loses_no_write() {
    let c = AgentCluster::start("swo").await;
    let all = [0, 1, 2];
    let first = c.wait_one_master(&all, Duration::from_secs(60)).await;
    c.dbs[first]
        .exec("CREATE TABLE test.bank (id INT PRIMARY KEY, balance INT NOT NULL)")
        .await
        .unwrap();

    // A client writing all along to whichever node takes its writes; each
    // acknowledged id with the time it was acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let dbs = c.dbs.clone();
        let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
        tokio::spawn(async move {
            let mut acked: Vec<(u64, Instant)> = Vec::new();
            let mut id = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for db in &dbs {
                    if app_insert(db, id).await.is_ok() {
                        acked.push((id, Instant::now()));
                        count.store(acked.len(), std::sync::atomic::Ordering::Relaxed);
                        id += 1;
                        break;
                    }
                }
            }
            acked
        })
    };
    // Writes acknowledged since `n`, a few of them.
    let writes_flow = async |what: &str| {
        let n = count.load(std::sync::atomic::Ordering::Relaxed);
        wait_until(what, Duration::from_secs(30), async || {
            count.load(std::sync::atomic::Ordering::Relaxed) >= n + 5
        })
        .await;
    };
    // Unauthenticated or wrong requests change nothing.
    let (code, _) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.ports[first].admin))
            .await
            .unwrap();
        let body = r#"{"to":"node1"}"#;
        s.write_all(
            format!(
                "POST /switchover HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_string();
        let code: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, text)
    };
    assert_eq!(code, 401, "no token, no switchover");
    let (code, body) = http_post(c.ports[first].admin, "/switchover", r#"{"to":"node9"}"#).await;
    assert_eq!(code, 400, "{body}");

    // Every ordered pair: a -> a+1 -> a+2 -> a -> a+2 -> a+1 -> a.
    let mut master = first;
    let mut downtimes = Vec::new();
    for step in [1, 1, 1, 2, 2, 2] {
        let to = (master + step) % 3;
        writes_flow("writes flowing before the switchover").await;
        let t0 = Instant::now();
        let req = format!(r#"{{"to":"node{}"}}"#, to + 1);
        let (mut code, mut body) = http_post(c.ports[master].admin, "/switchover", &req).await;
        if code == 503 {
            // Not drained in time: the master turned writable again and
            // the documented answer is to try again.
            eprintln!("switchover refused once ({body}); trying again");
            (code, body) = http_post(c.ports[master].admin, "/switchover", &req).await;
        }
        assert_eq!(
            code,
            200,
            "switchover node{} -> node{}: {body}",
            master + 1,
            to + 1
        );
        wait_until("the target promoted", Duration::from_secs(30), async || {
            c.role(to).await.as_deref() == Some("master")
        })
        .await;
        assert_eq!(c.wait_one_master(&all, Duration::from_secs(30)).await, to);
        eprintln!(
            "switchover node{} -> node{}: {body}, new master promoted after {:?}",
            master + 1,
            to + 1,
            t0.elapsed()
        );
        downtimes.push(t0);
        master = to;
    }
    writes_flow("writes flowing after the last switchover").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap();
    // Write downtime of each switchover: the longest gap between two
    // acknowledged writes from its start to the next one's (printed, not
    // asserted: bench figures do not belong in assertions).
    let ends: Vec<Instant> = downtimes
        .iter()
        .skip(1)
        .copied()
        .chain([Instant::now()])
        .collect();
    for (t0, end) in downtimes.into_iter().zip(ends) {
        let gap = acked
            .windows(2)
            .filter(|w| w[1].1 > t0 && w[0].1 < end)
            .map(|w| w[1].1.duration_since(w[0].1.max(t0)))
            .max()
            .unwrap_or_default();
        eprintln!("write downtime: {} ms", gap.as_millis());
    }
    assert!(acked.len() > 20, "writes went on: {}", acked.len());
    let pos = c.dbs[master].gtid_binlog_pos().await.unwrap();
    for i in all.into_iter().filter(|&i| i != master) {
        c.dbs[i]
            .wait_for_gtid(&pos, Duration::from_secs(30))
            .await
            .unwrap();
    }
    assert_same_checksums(&c.dbs, &["test.bank"]).await;
    for db in &c.dbs {
        let n: i64 = db
            .query_one("SELECT COUNT(*) FROM test.bank")
            .await
            .unwrap();
        assert_eq!(
            n as usize,
            acked.len(),
            "{}: every acknowledged write",
            db.name()
        );
    }
    for i in all {
        let role = c.role(i).await.unwrap();
        assert_eq!(role, if i == master { "master" } else { "replica" });
    }
}

// ---------------------------------------------------------------------
// Faults under a bank workload, with every MariaDB run by its node's agent
// (`--supervise-mariadb`, as in production): the agent restarts, fences
// and rejoins it; the test only hurts and heals.

const ACCOUNTS: i64 = 10;
const START_BALANCE: i64 = 1000;

/// A MariaDB run by a node's agent, reached over TCP with the cluster's
/// admin account (or another one).
struct SqlNode {
    name: String,
    port: u16,
    /// Where the supervisor writes `mariadbd`'s pid.
    pid_file: std::path::PathBuf,
}

type SqlResult<T> = Result<T, testkit::mysql_async::Error>;

impl SqlNode {
    async fn conn_as(&self, user: &str, password: &str) -> SqlResult<testkit::mysql_async::Conn> {
        let opts = testkit::mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false);
        testkit::mysql_async::Conn::new(opts).await
    }

    async fn exec(&self, sql: &str) -> SqlResult<()> {
        let mut c = self.conn_as(ADMIN_USER, ADMIN_PASSWORD).await?;
        let r = c.query_drop(sql).await;
        drop(c.disconnect().await);
        r
    }

    async fn query_rows<T: testkit::mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> SqlResult<Vec<T>> {
        let mut c = self.conn_as(ADMIN_USER, ADMIN_PASSWORD).await?;
        let r = c.query(sql).await;
        drop(c.disconnect().await);
        r
    }

    /// The single value of `sql` (panics on an empty result).
    async fn query_one<T: testkit::mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> SqlResult<T> {
        let mut rows = self.query_rows(sql).await?;
        assert!(!rows.is_empty(), "{}: no row for {sql}", self.name);
        Ok(rows.swap_remove(0))
    }

    /// The running `mariadbd`'s pid, from the supervisor's pid file.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a mariadbd pid");
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }
}

/// Three nodes whose binlog servers run their MariaDB (`--supervise-mariadb`)
/// and all campaign.
struct SupervisedCluster {
    svrs: Vec<Svr>,
    nodes: Vec<Arc<SqlNode>>,
    /// Per node: (admin API port, Paxos port).
    admin: Vec<u16>,
    paxos: Vec<u16>,
    tmp: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

fn mariadbd_binary() -> String {
    ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("mariadbd")
        .to_string()
}

impl SupervisedCluster {
    async fn start(name: &str) -> SupervisedCluster {
        let serial = SERIAL.lock().await;
        let tmp = tempfile::tempdir().unwrap();
        let pv = free_ports(21);
        let mut y = format!(
            "version: 1\ncluster_id: 4545\nname: {name}\nlease: {{duration: 2s}}\ncredentials:\n\
             \x20 replication: {{user: repl, password: \"repl-secret\"}}\n\
             \x20 mariadb_admin: {{user: {ADMIN_USER}, password: \"{ADMIN_PASSWORD}\"}}\n\
             \x20 admin_api: {{token: \"e2e-token\"}}\n\
             mariadb:\n  binary: {}\n  options:\n    innodb_buffer_pool_size: 32M\n    \
             performance_schema: \"OFF\"\n    skip_name_resolve:\nnodes:\n",
            mariadbd_binary()
        );
        let mut nodes = Vec::new();
        for n in 0..3 {
            let p = &pv[n * 7..n * 7 + 7];
            let dir = tmp.path().join(format!("node{}", n + 1));
            y += &format!(
                "  - {{name: node{id}, id: {id}, host: 127.0.0.1, paxos_port: {}, binlog_port: {}, \
                 admin_port: {}, proxy_rw_port: {}, proxy_ro_port: {}, mariadb_port: {}, proxy_admin_port: {}, data_dir: {}}}\n",
                p[0],
                p[1],
                p[2],
                p[3],
                p[4],
                p[5],
                p[6],
                dir.display(),
                id = n + 1
            );
            nodes.push(Arc::new(SqlNode {
                name: format!("node{}", n + 1),
                port: p[5],
                pid_file: dir.join("mariadb.pid"),
            }));
        }
        let cfg = tmp.path().join("cluster.yaml");
        std::fs::write(&cfg, y).unwrap();
        let svrs = (1..=3)
            .map(|n| {
                Svr::spawn(
                    &format!("node{n}"),
                    vec![
                        "--config".into(),
                        cfg.display().to_string(),
                        "--node".into(),
                        format!("node{n}"),
                        "--supervise-mariadb".into(),
                        "--without-proxy".into(),
                    ],
                    tmp.path().join(format!("node{n}.log")),
                )
            })
            .collect();
        SupervisedCluster {
            svrs,
            nodes,
            admin: (0..3).map(|n| pv[n * 7 + 2]).collect(),
            paxos: (0..3).map(|n| pv[n * 7]).collect(),
            tmp,
            _serial: serial,
        }
    }

    async fn role(&self, i: usize) -> Option<String> {
        status_json(self.admin[i]).await?["agent"]["role"]
            .as_str()
            .map(str::to_string)
    }

    /// Waits until exactly one of `among` is master by its agent (the
    /// others replicas) and returns it.
    async fn wait_one_master(&self, among: &[usize], timeout: Duration) -> usize {
        let mut found = None;
        wait_until("one master, the others replicas", timeout, async || {
            let mut masters = Vec::new();
            let mut replicas = 0;
            for &i in among {
                match self.role(i).await.as_deref() {
                    Some("master") => masters.push(i),
                    Some("replica") => replicas += 1,
                    _ => {}
                }
            }
            found = masters.first().copied();
            masters.len() == 1 && masters.len() + replicas == among.len()
        })
        .await;
        found.expect("a master")
    }

    /// Waits until node `i`'s agent reports `replica`.
    async fn wait_replica(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.role(i).await.as_deref() != Some("replica") {
            assert!(
                Instant::now() < deadline,
                "node{} did not rejoin as a replica: {}\n{}",
                i + 1,
                status_json(self.admin[i]).await.unwrap_or_default()["agent"],
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of node `i`'s binlog server log (for failures).
    fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.tmp.path().join(format!("node{}.log", i + 1)))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Clients moving money between accounts on whichever node takes writes;
/// every acknowledged transfer is logged.
struct Bank {
    acked: Arc<std::sync::Mutex<Vec<u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The bank's tables and the application account (created on the master,
/// replicated like any statement).
async fn bank_setup(db: &SqlNode) {
    db.exec(&format!(
        "CREATE DATABASE IF NOT EXISTS test; \
         CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON test.* TO '{APP_USER}'@'%'; \
         CREATE TABLE test.accounts (id INT PRIMARY KEY, balance INT NOT NULL); \
         CREATE TABLE test.transfers (id BIGINT PRIMARY KEY, src INT, dst INT, amount INT)"
    ))
    .await
    .unwrap();
    let rows: Vec<String> = (1..=ACCOUNTS)
        .map(|i| format!("({i}, {START_BALANCE})"))
        .collect();
    db.exec(&format!(
        "INSERT INTO test.accounts VALUES {}",
        rows.join(",")
    ))
    .await
    .unwrap();
}

/// One transfer as the application account, within `timeout`.
async fn transfer(db: &SqlNode, id: u64, src: i64, dst: i64, amount: i64) -> bool {
    let work = async {
        let mut c = db.conn_as(APP_USER, APP_PASSWORD).await.ok()?;
        c.query_drop(format!(
            "START TRANSACTION; \
             UPDATE test.accounts SET balance = balance - {amount} WHERE id = {src}; \
             UPDATE test.accounts SET balance = balance + {amount} WHERE id = {dst}; \
             INSERT INTO test.transfers VALUES ({id}, {src}, {dst}, {amount}); COMMIT"
        ))
        .await
        .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), work).await,
        Ok(Some(()))
    )
}

fn bank_start(dbs: &[Arc<SqlNode>], clients: u64) -> Bank {
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = (0..clients)
        .map(|k| {
            let (dbs, acked, stop) = (dbs.to_vec(), Arc::clone(&acked), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut seq = 0u64;
                let mut at = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let id = k * 1_000_000 + seq;
                    let src = (seq * 7 + k) as i64 % ACCOUNTS + 1;
                    let dst = (src % ACCOUNTS) + 1;
                    let mut done = false;
                    for j in 0..dbs.len() {
                        let i = (at + j) % dbs.len();
                        if transfer(&dbs[i], id, src, dst, (seq % 50) as i64 + 1).await {
                            acked.lock().unwrap().push(id);
                            at = i;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    Bank { acked, stop, tasks }
}

impl Bank {
    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Polls every node's `read_only` every 50 ms (each query within 200 ms,
/// connection included: a stopped or dead server counts as not writable)
/// and records when a look found two or more nodes at `read_only=OFF`.
struct Monitor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u32, Vec<DoubleLook>)>,
}

/// When a look ended, and which nodes (0-based) it found writable.
type DoubleLook = (Instant, Vec<usize>);

fn monitor_start(dbs: &[Arc<SqlNode>]) -> Monitor {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (dbs, flag) = (dbs.to_vec(), Arc::clone(&stop));
    let task = tokio::spawn(async move {
        let (mut looks, mut doubles) = (0u32, Vec::new());
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let mut writable = Vec::new();
            for (i, db) in dbs.iter().enumerate() {
                let q = tokio::time::timeout(
                    Duration::from_millis(200),
                    db.query_one::<i64>("SELECT @@read_only"),
                );
                if let Ok(Ok(0)) = q.await {
                    writable.push(i);
                }
            }
            looks += 1;
            if writable.len() >= 2 {
                doubles.push((Instant::now(), writable));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (looks, doubles)
    });
    Monitor { stop, task }
}

impl Monitor {
    /// (looks, when and which nodes were writable together).
    async fn stop(self) -> (u32, Vec<DoubleLook>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The end state every fault test checks: one master, two replicas caught
/// up, money conserved, every acknowledged transfer everywhere, identical
/// tables.
async fn verify_bank(c: &SupervisedCluster, acked: &[u64]) {
    let all = [0, 1, 2];
    let master = c.wait_one_master(&all, Duration::from_secs(60)).await;
    let pos: String = c.nodes[master]
        .query_one("SELECT @@gtid_binlog_pos")
        .await
        .unwrap();
    for i in all.into_iter().filter(|&i| i != master) {
        let reached: i64 = c.nodes[i]
            .query_one(&format!("SELECT MASTER_GTID_WAIT('{pos}', 60)"))
            .await
            .unwrap();
        assert_eq!(reached, 0, "node{} did not reach {pos}", i + 1);
    }
    let mut checksums = Vec::new();
    for db in &c.nodes {
        let total: i64 = db
            .query_one("SELECT CAST(SUM(balance) AS SIGNED) FROM test.accounts")
            .await
            .unwrap();
        assert_eq!(
            total,
            ACCOUNTS * START_BALANCE,
            "{}: money conserved",
            db.name
        );
        let ids: Vec<u64> = db
            .query_rows("SELECT id FROM test.transfers")
            .await
            .unwrap();
        let have: std::collections::HashSet<u64> = ids.into_iter().collect();
        let missing: Vec<&u64> = acked.iter().filter(|id| !have.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{} lacks acknowledged transfers {missing:?}",
            db.name
        );
        let sums: Vec<(String, Option<i64>)> = db
            .query_rows("CHECKSUM TABLE test.accounts, test.transfers")
            .await
            .unwrap();
        checksums.push(sums);
    }
    assert!(
        checksums.windows(2).all(|w| w[0] == w[1]),
        "CHECKSUM TABLE differs: {checksums:?}"
    );
}

/// How the master node is hurt. Healing is only undoing the fault: the
/// agent does the rest (restarting `mariadbd` as a replica, which rolls
/// back what was never acknowledged).
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillMariaDb,
    /// kill -9 of the binlog server alone (its `mariadbd` dies with it).
    KillBinlogServer,
    KillBoth,
    StopAll,
    /// Every packet to the master's Paxos port dropped (iptables on lo):
    /// the transport's connections are one-way, so nothing reaches it.
    CutOff,
}

/// An iptables rule dropping TCP packets to `port`, removed on drop.
struct DropPort(u16);

impl DropPort {
    fn new(port: u16) -> DropPort {
        let ok = std::process::Command::new("iptables")
            .args([
                "-I",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "DROP",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "iptables -I INPUT ... --dport {port} -j DROP (needs root and iptables)"
        );
        DropPort(port)
    }
}

impl Drop for DropPort {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args([
                "-D",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                &self.0.to_string(),
                "-j",
                "DROP",
            ])
            .status();
    }
}

/// How long after SIGCONT a frozen master may still answer `read_only=OFF`:
/// its state was frozen with it, and the resumed `mariadbd` answers the
/// monitor's waiting query before its agent's first look (which restarts
/// it: its commits wait for an ACK that never comes). Nothing commits there
/// meanwhile (the bank's acknowledged transfers are all checked).
const THAWED_MASTER_GRACE: Duration = Duration::from_secs(1);

async fn fault_under_bank_workload(fault: Fault) {
    let mut c = SupervisedCluster::start(match fault {
        Fault::KillMariaDb => "f-kdb",
        Fault::KillBinlogServer => "f-ksvr",
        Fault::KillBoth => "f-kall",
        Fault::StopAll => "f-stop",
        Fault::CutOff => "f-cut",
    })
    .await;
    let all = [0, 1, 2];
    let m = c.wait_one_master(&all, Duration::from_secs(120)).await;
    bank_setup(&c.nodes[m]).await;
    let monitor = monitor_start(&c.nodes);
    let bank = bank_start(&c.nodes, 4);
    wait_until("transfers flowing", Duration::from_secs(30), async || {
        bank.count() >= 30
    })
    .await;
    let old_pid = c.nodes[m].pid();
    let t0 = Instant::now();
    let mut cut = None;
    match fault {
        Fault::KillMariaDb => c.nodes[m].signal("KILL"),
        // Its mariadbd dies with it (PR_SET_PDEATHSIG).
        Fault::KillBinlogServer => c.svrs[m].kill(),
        Fault::KillBoth => {
            c.nodes[m].signal("KILL");
            c.svrs[m].kill();
        }
        Fault::StopAll => {
            c.nodes[m].signal("STOP");
            c.svrs[m].signal("STOP");
        }
        Fault::CutOff => cut = Some(DropPort::new(c.paxos[m])),
    }
    let before = bank.count();
    // A killed mariadbd is restarted at once, and its node may keep the
    // lease if it caught up in time; in the other faults the node is gone.
    let candidates: Vec<usize> = match fault {
        Fault::KillMariaDb => all.to_vec(),
        _ => all.into_iter().filter(|&i| i != m).collect(),
    };
    let m2 = c
        .wait_one_master(&candidates, Duration::from_secs(60))
        .await;
    wait_until(
        "transfers on the new master",
        Duration::from_secs(30),
        async || bank.count() >= before + 30,
    )
    .await;
    eprintln!(
        "{fault:?}: node{} hurt, node{} master and taking transfers {:?} later",
        m + 1,
        m2 + 1,
        t0.elapsed()
    );
    if let Fault::KillMariaDb = fault {
        // Restarted by the agent (as a replica, rolling back what was not
        // acknowledged); its node may even have kept the lease.
        wait_until(
            "the killed mariadbd restarted",
            Duration::from_secs(30),
            async || c.nodes[m].pid().is_some_and(|p| Some(p) != old_pid),
        )
        .await;
    }
    if let Fault::CutOff = fault {
        // Fenced before the others could elect: its MariaDB (commits were
        // waiting for an ACK) was restarted as a replica.
        assert_ne!(
            c.nodes[m].pid(),
            old_pid,
            "the cut-off master's mariadbd was restarted"
        );
    }
    // Heal.
    let mut thawed = None;
    match fault {
        Fault::KillMariaDb => {}
        Fault::KillBinlogServer | Fault::KillBoth => c.svrs[m].start(),
        Fault::StopAll => {
            thawed = Some(Instant::now());
            c.svrs[m].signal("CONT");
            c.nodes[m].signal("CONT");
        }
        Fault::CutOff => drop(cut.take()),
    }
    if m2 != m {
        c.wait_replica(m, Duration::from_secs(90)).await;
    }
    wait_until("transfers go on", Duration::from_secs(30), async || {
        bank.count() >= before + 60
    })
    .await;
    let acked = bank.stop().await;
    let (looks, doubles) = monitor.stop().await;
    eprintln!(
        "{fault:?}: {} transfers acknowledged; read_only monitor: {} of {looks} looks saw two writable nodes",
        acked.len(),
        doubles.len()
    );
    verify_bank(&c, &acked).await;
    for (at, writable) in &doubles {
        let after_thaw = thawed.map(|t| at.saturating_duration_since(t));
        assert!(
            writable.contains(&m)
                && thawed.is_some_and(|t| *at >= t)
                && after_thaw.is_some_and(|d| d <= THAWED_MASTER_GRACE),
            "{fault:?}: nodes {writable:?} (0-based) writable at once, {:?} after the fault \
             ({:?} after SIGCONT)",
            at.duration_since(t0),
            after_thaw
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_masters_mariadb_under_a_bank_workload() {
    fault_under_bank_workload(Fault::KillMariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_masters_binlog_server_under_a_bank_workload() {
    fault_under_bank_workload(Fault::KillBinlogServer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_master_node_under_a_bank_workload() {
    fault_under_bank_workload(Fault::KillBoth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_of_the_master_node_beyond_the_lease_under_a_bank_workload() {
    fault_under_bank_workload(Fault::StopAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_master_cut_off_from_the_others_under_a_bank_workload() {
    fault_under_bank_workload(Fault::CutOff).await;
}

/// The design brief's server_id trap: the master's binlog server dies after
/// a transaction is chosen and before its ACK. The new master has it (it is
/// chosen); the old master's MariaDB, restarted as a replica, rolls it back
/// (never acknowledged) and must then get it back through replication,
/// which it would skip if it still had the server_id it wrote it with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_dying_between_the_choice_and_the_ack_loses_nothing() {
    // Every binlog server aborts before acknowledging its 3rd value (only
    // the master's write path has values): the CREATE TABLE, id 1, then id 2.
    let mut c = AgentCluster::start_with_env(
        "trap",
        &[(phxbinlogsvr::server::write_path::CRASH_BEFORE_ACK_ENV, "3")],
    )
    .await;
    for s in &mut c.svrs {
        s.env.clear(); // restarts run without it
    }
    let all = [0, 1, 2];
    let m = c.wait_one_master(&all, Duration::from_secs(60)).await;
    let old_id: u32 = c.dbs[m].query_one("SELECT @@server_id").await.unwrap();
    c.dbs[m]
        .exec("CREATE TABLE test.bank (id INT PRIMARY KEY, balance INT NOT NULL)")
        .await
        .unwrap();
    app_insert(&c.dbs[m], 1).await.unwrap();
    // Chosen, never acknowledged: the commit does not return.
    let hung = tokio::time::timeout(Duration::from_secs(3), app_insert(&c.dbs[m], 2)).await;
    assert!(hung.is_err(), "the commit must not return without its ACK");
    wait_until(
        "the master's binlog server aborted",
        Duration::from_secs(10),
        async || !c.svrs[m].is_running(),
    )
    .await;
    c.dbs[m].kill9().await.unwrap();

    let others: Vec<usize> = all.into_iter().filter(|&i| i != m).collect();
    let m2 = c.wait_one_master(&others, Duration::from_secs(30)).await;
    let on_new: i64 = c.dbs[m2]
        .query_one("SELECT COUNT(*) FROM test.bank WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(on_new, 1, "the chosen transaction is on the new master");
    app_insert(&c.dbs[m2], 3).await.unwrap();

    // The old node back: MariaDB as a replica (it rolls id 2 back), then
    // its binlog server; the agent gives it its replica server_id.
    c.dbs[m].start_again().await.unwrap();
    c.svrs[m].start();
    wait_until(
        "the old master rejoins",
        Duration::from_secs(60),
        async || c.role(m).await.as_deref() == Some("replica"),
    )
    .await;
    let new_id: u32 = c.dbs[m].query_one("SELECT @@server_id").await.unwrap();
    assert_ne!(
        new_id, old_id,
        "a replica never keeps the id it wrote with as master"
    );
    let pos = c.dbs[m2].gtid_binlog_pos().await.unwrap();
    for i in others.iter().copied().filter(|&i| i != m2).chain([m]) {
        c.dbs[i]
            .wait_for_gtid(&pos, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("node{} did not reach {pos}: {e}", i + 1));
    }
    for db in &c.dbs {
        let ids: Vec<i64> = db
            .query_rows("SELECT id FROM test.bank ORDER BY id")
            .await
            .unwrap();
        assert_eq!(ids, vec![1, 2, 3], "{}", db.name());
    }
    assert_same_checksums(&c.dbs, &["test.bank"]).await;
}

// ---------------------------------------------------------------------
// The agent running mariadbd itself (--supervise-mariadb).

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervised_mariadbs_are_started_restarted_and_die_with_their_binlog_server() {
    let mut c = SupervisedCluster::start("sup").await;
    let all = [0, 1, 2];
    let m = c.wait_one_master(&all, Duration::from_secs(120)).await;
    // The cluster's accounts exist; the application's are the operator's,
    // created on the master and replicated like any other statement.
    c.nodes[m]
        .exec(&format!(
            "CREATE DATABASE test; CREATE TABLE test.bank (id INT PRIMARY KEY, balance INT NOT NULL); \
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON test.* TO '{APP_USER}'@'%'; \
             INSERT INTO test.bank VALUES (1, 100)"
        ))
        .await
        .unwrap();

    // kill -9 of the master's mariadbd: the agent restarts it as a replica;
    // a master takes writes again (this node again if its mariadbd came
    // back before its lease ran out, after catching up).
    let pid = c.nodes[m].pid().unwrap();
    c.nodes[m].signal("KILL");
    wait_until("a new mariadbd", Duration::from_secs(30), async || {
        c.nodes[m].pid().is_some_and(|p| p != pid)
    })
    .await;
    let m2 = c.wait_one_master(&all, Duration::from_secs(120)).await;
    c.nodes[m2]
        .exec("INSERT INTO test.bank VALUES (2, 100)")
        .await
        .unwrap();
    if m2 != m {
        c.wait_replica(m, Duration::from_secs(60)).await;
    }

    // kill -9 of the master's binlog server: its mariadbd dies with it, so
    // it cannot stay writable.
    let pid2 = c.nodes[m2].pid().unwrap();
    c.svrs[m2].kill();
    wait_until(
        "the mariadbd dies with its binlog server",
        Duration::from_secs(10),
        async || !pid_alive(pid2),
    )
    .await;
    let rest: Vec<usize> = all.into_iter().filter(|&i| i != m2).collect();
    let m3 = c.wait_one_master(&rest, Duration::from_secs(120)).await;
    c.nodes[m3]
        .exec("INSERT INTO test.bank VALUES (3, 100)")
        .await
        .unwrap();
    c.svrs[m2].start();
    c.wait_replica(m2, Duration::from_secs(60)).await;
    // Every node has every row, and only the master is writable.
    for n in all {
        wait_until("the rows everywhere", Duration::from_secs(30), async || {
            c.nodes[n]
                .query_one::<i64>("SELECT COUNT(*) FROM test.bank")
                .await
                .ok()
                == Some(3)
        })
        .await;
        let ro: i64 = c.nodes[n].query_one("SELECT @@read_only").await.unwrap();
        assert_eq!(ro == 0, n == m3, "node{}: read_only", n + 1);
    }
    // A clean shutdown stops the mariadbd too.
    let pid3 = c.nodes[m3].pid().unwrap();
    c.svrs[m3].signal("TERM");
    wait_until(
        "mariadbd stopped with its binlog server",
        Duration::from_secs(60),
        async || !pid_alive(pid3),
    )
    .await;
}

/// A privileged write on a replica (root has READ ONLY ADMIN in MariaDB
/// 10.11 and writes through `read_only`) forks it from the log: its binlog
/// holds a GTID the chosen log lacks. The agent reports it diverged, it
/// never campaigns, and the rest of the cluster goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_write_on_a_replica_marks_it_diverged() {
    let c = AgentCluster::start("rootw").await;
    let all = [0, 1, 2];
    let m = c.wait_one_master(&all, Duration::from_secs(60)).await;
    c.dbs[m]
        .exec("CREATE TABLE test.bank (id INT PRIMARY KEY, balance INT NOT NULL)")
        .await
        .unwrap();
    app_insert(&c.dbs[m], 1).await.unwrap();
    let r = (m + 1) % 3;
    let pos = c.dbs[m].gtid_binlog_pos().await.unwrap();
    c.dbs[r]
        .wait_for_gtid(&pos, Duration::from_secs(30))
        .await
        .unwrap();
    // The application account is refused; root is not.
    assert!(app_insert(&c.dbs[r], 2).await.is_err());
    c.dbs[r]
        .exec("INSERT INTO test.bank VALUES (99, 0)")
        .await
        .unwrap();
    wait_until(
        "the replica reported diverged",
        Duration::from_secs(10),
        async || c.role(r).await.as_deref() == Some("diverged"),
    )
    .await;
    let s = status_json(c.ports[r].admin).await.unwrap();
    assert_eq!(s["agent"]["may_campaign"], false, "{s}");
    let detail = s["agent"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("chosen log"),
        "the reason is given: {detail}"
    );
    eprintln!("node{}: {detail}", r + 1);
    // The others go on: the master takes writes, the third replica follows.
    app_insert(&c.dbs[m], 3).await.unwrap();
    let third = 3 - m - r;
    let pos = c.dbs[m].gtid_binlog_pos().await.unwrap();
    c.dbs[third]
        .wait_for_gtid(&pos, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(c.role(r).await.as_deref(), Some("diverged"), "sticky");
}

/// A large transaction does not cost the master its lease: lease renewals
/// are Paxos values too, applied in order, so they must not queue behind
/// tens of MiB of transaction data (values are bounded, and so are the
/// bytes in flight). A watcher polls the master's status throughout the
/// commit of a 64 MiB row: it stays master, never fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_64_mib_transaction_keeps_the_masters_lease() {
    let c = AgentCluster::start("big").await;
    let all = [0, 1, 2];
    let m = c.wait_one_master(&all, Duration::from_secs(60)).await;
    c.dbs[m]
        .exec("CREATE TABLE test.t (id INT PRIMARY KEY, b LONGBLOB)")
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, admin) = (Arc::clone(&stop), c.ports[m].admin);
        tokio::spawn(async move {
            // (looks, looks not "master", least lease time left seen)
            let (mut looks, mut not_master, mut least) = (0u32, Vec::new(), u64::MAX);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(s) = status_json(admin).await {
                    looks += 1;
                    let role = s["agent"]["role"].as_str().unwrap_or("?").to_string();
                    if role != "master" {
                        not_master.push(format!("{role}: {}", s["agent"]["detail"]));
                    }
                    if let Some(left) = s["lease"]["remaining_ms"].as_u64() {
                        least = least.min(left);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (looks, not_master, least)
        })
    };
    let t = Instant::now();
    let commit = c.dbs[m].exec(
        "INSERT INTO test.t VALUES (1, REPEAT(CONCAT(MD5('a'), MD5('b')), 64 * 1024 * 1024 / 64))",
    );
    tokio::time::timeout(Duration::from_secs(300), commit)
        .await
        .expect("the 64 MiB commit returns")
        .unwrap();
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (looks, not_master, least) = watcher.await.unwrap();
    eprintln!(
        "64 MiB commit in {took:?}; {looks} looks at the master, least lease time left {least} ms"
    );
    assert!(looks > 0);
    assert!(
        not_master.is_empty(),
        "the master left its role during the commit: {not_master:?}"
    );
    let pos = c.dbs[m].gtid_binlog_pos().await.unwrap();
    for i in all.into_iter().filter(|&i| i != m) {
        c.dbs[i]
            .wait_for_gtid(&pos, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("node{} did not reach {pos}: {e}", i + 1));
    }
    assert_same_checksums(&c.dbs, &["test.t"]).await;
}
