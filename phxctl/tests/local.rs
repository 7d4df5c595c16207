//! `phxctl` end to end on a real one-machine cluster: `local up` (three
//! supervised `mariadbd`, binlog servers and proxies), `status`, a client
//! through the ports, `switchover` (and a wrong token refused), `local down`.
#![allow(clippy::unwrap_used)]

#[path = "../../phxbinlogsvr/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{free_ports, wait_until, workspace_binary};
use testkit::mysql_async::prelude::Queryable;
use testkit::mysql_async::{self, OptsBuilder};

/// The demo account `local up` creates, through `port`.
fn demo(port: u16) -> mysql_async::Opts {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("demo"))
        .pass(Some("demo-password"))
        .db_name(Some("demo"))
        .prefer_socket(false)
        .into()
}

/// One cluster at a time (2-core machines; each is nine processes).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Ports {
    rw: u16,
    ro: u16,
    mariadb: u16,
}

fn write_config(dir: &Path, token: &str, ports: &[u16]) -> PathBuf {
    write_config_n(dir, token, ports, 3, &format!("cluster-{token}.yaml"))
}

/// `n` nodes (the fourth, if any, a learner) in `dir/file`.
fn write_config_n(dir: &Path, token: &str, ports: &[u16], n: usize, file: &str) -> PathBuf {
    let roles: Vec<&str> = (0..n)
        .map(|i| if i >= 3 { "learner" } else { "voter" })
        .collect();
    write_config_roles(dir, token, ports, &roles, file)
}

/// One node per entry of `roles` in `dir/file`.
fn write_config_roles(
    dir: &Path,
    token: &str,
    ports: &[u16],
    roles: &[&str],
    file: &str,
) -> PathBuf {
    let n = roles.len();
    let mut y = format!(
        "version: 1\ncluster_id: 6161\nname: phxctl-e2e\ndata_root: {}\n\
         credentials:\n  replication: {{user: phxsql_repl, password: \"r-secret\"}}\n  \
         mariadb_admin: {{user: phxsql_admin, password: \"a-secret\"}}\n  admin_api: {{token: \"{token}\"}}\n\
         mariadb:\n  options:\n    innodb_buffer_pool_size: 32M\n    performance_schema: \"OFF\"\n\
         nodes:\n",
        dir.join("data").display()
    );
    for i in 0..n {
        let p = &ports[i * 7..i * 7 + 7];
        let role = roles[i];
        y += &format!(
            "  - {{name: node{id}, id: {id}, role: {role}, host: 127.0.0.1, paxos_port: {}, binlog_port: {}, admin_port: {}, \
             proxy_rw_port: {}, proxy_ro_port: {}, mariadb_port: {}, proxy_admin_port: {}}}\n",
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            p[6],
            id = i + 1
        );
    }
    let path = dir.join(file);
    std::fs::write(&path, y).unwrap();
    path
}

fn phxctl(cfg: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_phxctl"))
        .arg("-c")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ phxctl {args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stops the cluster however the test ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let out = phxctl(&self.0, &["local", "down"]);
        if !out.status.success() && std::thread::panicking() {
            eprintln!("local down failed");
        }
    }
}

fn status_json(cfg: &Path) -> serde_json::Value {
    let out = phxctl(cfg, &["status", "--json"]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn master_of(status: &serde_json::Value) -> Option<String> {
    let nodes = status["nodes"].as_array()?;
    let masters: Vec<&str> = nodes
        .iter()
        .filter(|n| n["role"] == "master")
        .filter_map(|n| n["node"].as_str())
        .collect();
    (masters.len() == 1).then(|| masters[0].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_up_status_switchover_down() {
    let _serial = SERIAL.lock().await;
    // `local up` runs the daemons found next to phxctl.
    workspace_binary("phxbinlogsvr");
    workspace_binary("phxsqlproxy");
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(21);
    let cfg = write_config(tmp.path(), "right-token", &ports);
    let bad = write_config(tmp.path(), "wrong-token", &ports);
    let node = |i: usize| Ports {
        rw: ports[i * 7 + 3],
        ro: ports[i * 7 + 4],
        mariadb: ports[i * 7 + 5],
    };

    let _down = Down(cfg.clone());
    let out = phxctl(&cfg, &["local", "up"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is the master"), "{text}");
    assert!(text.contains("+ Cluster: phxctl-e2e"), "{text}");
    assert_eq!(
        text.matches("| ok").count(),
        3,
        "every node up after `up`: {text}"
    );

    // One master, every node healthy (the proxies' heartbeats included).
    let mut status = serde_json::Value::Null;
    wait_until("every node healthy", Duration::from_secs(30), async || {
        status = status_json(&cfg);
        status["nodes"]
            .as_array()
            .is_some_and(|ns| ns.len() == 3 && ns.iter().all(|n| n["health"] == "ok"))
    })
    .await;
    let master = master_of(&status).expect("exactly one master");
    let m: usize = master.trim_start_matches("node").parse::<usize>().unwrap() - 1;
    let other = (m + 1) % 3;

    // The demo account works through the ports.
    let mut w = mysql_async::Conn::new(demo(node(other).rw)).await.unwrap();
    w.query_drop("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    drop(w);
    let mut r = mysql_async::Conn::new(demo(node(other).ro)).await.unwrap();
    wait_until(
        "the rows on a replica",
        Duration::from_secs(30),
        async || {
            r.query_first::<u64, _>("SELECT COUNT(*) FROM t")
                .await
                .ok()
                .flatten()
                == Some(2)
        },
    )
    .await;
    drop(r);

    // A wrong admin token is refused, and nothing moves.
    let to = format!("node{}", other + 1);
    let out = phxctl(&bad, &["switchover", "--to", &to]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("admin token"), "{err}");
    assert_eq!(
        master_of(&status_json(&cfg)).as_deref(),
        Some(master.as_str())
    );

    // Switchover.
    let out = phxctl(&cfg, &["switchover", "--to", &to]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("to {to}")));
    wait_until(
        "the new master in status",
        Duration::from_secs(30),
        async || master_of(&status_json(&cfg)).as_deref() == Some(to.as_str()),
    )
    .await;

    // The lease length, cluster-wide: refused without the token and when
    // too short; then on every node.
    let out = phxctl(&bad, &["lease", "set", "4s"]);
    assert!(!out.status.success());
    let out = phxctl(&cfg, &["lease", "set", "100ms"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("twice the renew interval"));
    let out = phxctl(&cfg, &["lease", "set", "4s"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("lease length is 4s on every node"));

    // Down: every daemon and every mariadbd stops.
    let out = phxctl(&cfg, &["local", "down"]);
    assert!(out.status.success());
    for i in 0..3 {
        let p = node(i);
        for port in [p.rw, p.ro, p.mariadb] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "port {port} still open after local down"
            );
        }
    }
    let out = phxctl(&cfg, &["local", "down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing is running"));
}

/// Rows acknowledged by the writer.
type Acked = std::sync::Arc<std::sync::Mutex<Vec<u64>>>;

/// Inserts rows through `port` until `stop`, recording each acknowledged id;
/// reconnects after errors (a failover or a membership change may cut a
/// connection: those rows were not acknowledged).
async fn writer(port: u16, acked: Acked, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let opts = demo(port);
    let mut next = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(mut conn) = mysql_async::Conn::new(opts.clone()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            next += 1;
            match conn
                .exec_drop("INSERT INTO w (id) VALUES (?)", (next,))
                .await
            {
                Ok(()) => acked.lock().unwrap().push(next),
                Err(_) => break,
            }
        }
    }
}

/// Every acknowledged id is on the MariaDB at `port` (admin account).
async fn assert_has_all(port: u16, acked: &[u64]) {
    let opts: mysql_async::Opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("phxsql_admin"))
        .pass(Some("a-secret"))
        .prefer_socket(false)
        .into();
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let max = *acked.iter().max().unwrap_or(&0);
    wait_until(
        "every acknowledged row",
        Duration::from_secs(60),
        async || {
            conn.query_first::<u64, _>(format!("SELECT COUNT(*) FROM demo.w WHERE id <= {max}"))
                .await
                .ok()
                .flatten()
                .is_some_and(|n| n >= acked.len() as u64)
        },
    )
    .await;
    let have: Vec<u64> = conn.query("SELECT id FROM demo.w").await.unwrap();
    let have: std::collections::HashSet<u64> = have.into_iter().collect();
    let missing: Vec<&u64> = acked.iter().filter(|id| !have.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "port {port} lacks acknowledged rows {missing:?}"
    );
}

/// A live cluster grows from 3 to 4 nodes (the new one joins as a learner,
/// catches up from nothing, then votes) and shrinks back, with writes
/// running throughout; no acknowledged write is lost anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_four_and_back_under_writes() {
    let _serial = SERIAL.lock().await;
    workspace_binary("phxbinlogsvr");
    workspace_binary("phxsqlproxy");
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(28);
    let cfg3 = write_config_n(tmp.path(), "t", &ports, 3, "three.yaml");
    let cfg4 = write_config_n(tmp.path(), "t", &ports, 4, "four.yaml");
    let mariadb = |i: usize| ports[i * 7 + 5];
    let rw = ports[3];

    let _down = Down(cfg4.clone());
    assert!(phxctl(&cfg3, &["local", "up"]).status.success());
    let mut w = mysql_async::Conn::new(demo(rw)).await.unwrap();
    w.query_drop("CREATE TABLE w (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    drop(w);

    let acked: Acked = Default::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(writer(rw, acked.clone(), stop.clone()));
    wait_until("writes flowing", Duration::from_secs(30), async || {
        acked.lock().unwrap().len() > 20
    })
    .await;

    // Grow: node4's processes start (it is not a member yet); it joins as a
    // learner, its MariaDB is seeded from a peer, it catches up and votes.
    let up4 = phxctl(&cfg4, &["local", "up", "--node", "node4"]);
    assert!(up4.status.success());
    let out = phxctl(&cfg4, &["member", "add", "node4", "--learner"]);
    assert!(out.status.success());
    assert_eq!(status_json(&cfg4)["nodes"][3]["member"], "learner");
    let peer = match master_of(&status_json(&cfg4)).as_deref() {
        Some("node2") => "node3",
        _ => "node2",
    };
    let out = phxctl(&cfg4, &["node", "rebuild", "node4", "--from", peer]);
    assert!(out.status.success());
    let out = phxctl(&cfg4, &["member", "add", "node4"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("node4 is a voter"));
    let status = status_json(&cfg4);
    let node4 = &status["nodes"][3];
    assert_eq!(node4["member"], "voter", "{status}");
    assert_eq!(node4["role"], "replica", "{status}");
    let before = acked.lock().unwrap().len();
    wait_until(
        "writes flowing with four voters",
        Duration::from_secs(30),
        async || acked.lock().unwrap().len() > before + 20,
    )
    .await;

    // Shrink: node4 leaves, then stops; writes go on with three.
    // Checked while node4 still votes: once removed it receives nothing more.
    let snapshot: Vec<u64> = acked.lock().unwrap().clone();
    assert_has_all(mariadb(3), &snapshot).await;
    let out = phxctl(&cfg4, &["member", "remove", "node4"]);
    assert!(out.status.success());
    assert!(
        phxctl(&cfg4, &["local", "down", "--node", "node4"])
            .status
            .success()
    );
    let before = acked.lock().unwrap().len();
    wait_until(
        "writes flowing with three voters again",
        Duration::from_secs(30),
        async || acked.lock().unwrap().len() > before + 20,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    eprintln!("{} acknowledged writes", acked.len());
    for i in 0..3 {
        assert_has_all(mariadb(i), &acked).await;
    }
    let status = status_json(&cfg4);
    assert_eq!(status["nodes"][3]["member"], "-", "{status}");
}

/// A replica written behind the cluster's back (the admin account passes
/// read_only) is reported diverged; `node rebuild` re-seeds it from a peer,
/// after which it is a healthy replica again, without the stray row and
/// with every acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_node_is_rebuilt_from_a_peer() {
    let _serial = SERIAL.lock().await;
    workspace_binary("phxbinlogsvr");
    workspace_binary("phxsqlproxy");
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(21);
    let cfg = write_config(tmp.path(), "rb", &ports);
    let mariadb = |i: usize| ports[i * 7 + 5];
    let _down = Down(cfg.clone());
    assert!(phxctl(&cfg, &["local", "up"]).status.success());
    let master = master_of(&status_json(&cfg)).unwrap();
    let m: usize = master.trim_start_matches("node").parse::<usize>().unwrap() - 1;
    let (bad, good) = ((m + 1) % 3, (m + 2) % 3);

    let rw = ports[m * 7 + 3];
    let mut w = mysql_async::Conn::new(demo(rw)).await.unwrap();
    w.query_drop("CREATE TABLE w (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let mut acked = Vec::new();
    for id in 1..=50u64 {
        w.exec_drop("INSERT INTO w VALUES (?)", (id,))
            .await
            .unwrap();
        acked.push(id);
    }
    assert_has_all(mariadb(bad), &acked).await;

    // The stray write.
    let admin: mysql_async::Opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(mariadb(bad))
        .user(Some("phxsql_admin"))
        .pass(Some("a-secret"))
        .prefer_socket(false)
        .into();
    let mut rogue = mysql_async::Conn::new(admin.clone()).await.unwrap();
    rogue
        .query_drop("INSERT INTO demo.w VALUES (999999)")
        .await
        .unwrap();
    drop(rogue);
    let bad_name = format!("node{}", bad + 1);
    wait_until(
        "the replica reported diverged",
        Duration::from_secs(30),
        async || status_json(&cfg)["nodes"][bad]["role"] == "diverged",
    )
    .await;

    // Rebuild it from the other replica while writes go on.
    for id in 51..=60u64 {
        w.exec_drop("INSERT INTO w VALUES (?)", (id,))
            .await
            .unwrap();
        acked.push(id);
    }
    let from = format!("node{}", good + 1);
    let out = phxctl(&cfg, &["node", "rebuild", &bad_name, "--from", &from]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt from"));
    for id in 61..=70u64 {
        w.exec_drop("INSERT INTO w VALUES (?)", (id,))
            .await
            .unwrap();
        acked.push(id);
    }
    wait_until(
        "the rebuilt node healthy",
        Duration::from_secs(30),
        async || {
            let s = status_json(&cfg);
            s["nodes"][bad]["role"] == "replica" && s["nodes"][bad]["health"] == "ok"
        },
    )
    .await;
    assert_has_all(mariadb(bad), &acked).await;
    let mut c = mysql_async::Conn::new(admin).await.unwrap();
    let stray: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM demo.w WHERE id = 999999")
        .await
        .unwrap();
    assert_eq!(stray, Some(0), "the stray row is gone");
    drop(c);

    // The master is not rebuilt: it must hand the lease over first.
    let master_now = master_of(&status_json(&cfg)).unwrap();
    let other = if master_now == from { &bad_name } else { &from };
    let out = phxctl(&cfg, &["node", "rebuild", &master_now, "--from", other]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("switch over"), "{err}");

    // A rebuild that fails midway (its source stops answering while it
    // makes the backup, after this node's MariaDB was stopped) leaves the
    // node as it was: the agent starts the old MariaDB again.
    let mut api = phxsql_adminapi::AdminClient::new(
        format!("127.0.0.1:{}", ports[bad * 7 + 2]),
        Some("rb".to_string()),
        Duration::from_secs(5),
    );
    api.post_json("/rebuild", Some(&serde_json::json!({ "from": from })))
        .await
        .unwrap();
    wait_until(
        "the rebuild to download",
        Duration::from_secs(30),
        async || api.get_json("/rebuild").await.unwrap()["phase"] == "downloading",
    )
    .await;
    // SIGKILL (a clean stop would let the backup in flight finish).
    let pid_file = tmp.path().join(format!("data/{from}/phxbinlogsvr.pid"));
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    assert!(
        Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    let mut progress = serde_json::Value::Null;
    wait_until("the rebuild to fail", Duration::from_secs(60), async || {
        progress = api.get_json("/rebuild").await.unwrap();
        progress["phase"] == "failed"
    })
    .await;
    let error = progress["error"].as_str().unwrap_or_default();
    assert!(error.contains("downloading the backup"), "{progress}");
    // The source is down now: a rebuild from it is refused before anything
    // is stopped.
    let out = phxctl(&cfg, &["node", "rebuild", &bad_name, "--from", &from]);
    assert!(!out.status.success());
    wait_until(
        "the node serving again on its old data",
        Duration::from_secs(60),
        async || {
            let s = status_json(&cfg);
            s["nodes"][bad]["role"] == "replica"
        },
    )
    .await;
    assert_has_all(mariadb(bad), &acked).await;
}

/// `init` bootstraps from the first node: node1 alone is the cluster (and
/// takes writes), node2 and node3 join as learners, catch up and vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_grows_the_first_node_into_a_cluster() {
    let _serial = SERIAL.lock().await;
    workspace_binary("phxbinlogsvr");
    workspace_binary("phxsqlproxy");
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(21);
    let cfg = write_config_roles(
        tmp.path(),
        "init",
        &ports,
        &["voter", "learner", "learner"],
        "init.yaml",
    );
    let _down = Down(cfg.clone());
    assert!(phxctl(&cfg, &["local", "up"]).status.success());
    let s = status_json(&cfg);
    assert_eq!(master_of(&s).as_deref(), Some("node1"), "{s}");
    assert_eq!(s["nodes"][1]["member"], "learner", "{s}");

    // Data on the first node before the others join.
    let mut w = mysql_async::Conn::new(demo(ports[3])).await.unwrap();
    w.query_drop("CREATE TABLE w (id BIGINT PRIMARY KEY); INSERT INTO w VALUES (1), (2), (3)")
        .await
        .unwrap();
    drop(w);

    let out = phxctl(&cfg, &["init"]);
    assert!(out.status.success());
    let s = status_json(&cfg);
    for i in 0..3 {
        assert_eq!(s["nodes"][i]["member"], "voter", "{s}");
    }
    assert_has_all(ports[7 + 5], &[1, 2, 3]).await;
    assert_has_all(ports[14 + 5], &[1, 2, 3]).await;
    // Running it again changes nothing.
    let out = phxctl(&cfg, &["init"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("node2 is a voter already"));
}
