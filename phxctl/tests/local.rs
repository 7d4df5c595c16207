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

struct Ports {
    rw: u16,
    ro: u16,
    mariadb: u16,
}

fn write_config(dir: &Path, token: &str, ports: &[u16]) -> PathBuf {
    let mut y = format!(
        "version: 1\ncluster_id: 6161\nname: phxctl-e2e\ndata_root: {}\n\
         credentials:\n  replication: {{user: phxsql_repl, password: \"r-secret\"}}\n  \
         mariadb_admin: {{user: phxsql_admin, password: \"a-secret\"}}\n  admin_api: {{token: \"{token}\"}}\n\
         mariadb:\n  options:\n    innodb_buffer_pool_size: 32M\n    performance_schema: \"OFF\"\n\
         nodes:\n",
        dir.join("data").display()
    );
    for n in 0..3 {
        let p = &ports[n * 7..n * 7 + 7];
        y += &format!(
            "  - {{name: node{id}, id: {id}, host: 127.0.0.1, paxos_port: {}, binlog_port: {}, admin_port: {}, \
             proxy_rw_port: {}, proxy_ro_port: {}, mariadb_port: {}, proxy_admin_port: {}}}\n",
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            p[6],
            id = n + 1
        );
    }
    let path = dir.join(format!("cluster-{token}.yaml"));
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
    let demo = |port: u16| -> mysql_async::Opts {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some("demo"))
            .pass(Some("demo-password"))
            .db_name(Some("demo"))
            .prefer_socket(false)
            .into()
    };
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
