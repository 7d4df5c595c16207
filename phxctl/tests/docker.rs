//! The docker-compose cluster (docker/): the image built without a registry,
//! three containers up, a write through one node's read-write port, a read
//! through another's read-only port, the master's container stopped, a new
//! master taking writes, everything removed. Runs when a Docker engine (and
//! docker-compose) is present; `PHXSQL_SKIP_DOCKER=1` skips it.
#![allow(clippy::unwrap_used)]

#[path = "../../phxbinlogsvr/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{wait_until, workspace_binary};
use testkit::mysql_async::prelude::Queryable;
use testkit::mysql_async::{self, OptsBuilder};

const PROJECT: &str = "phxsqltest";
const ADDRS: [&str; 3] = ["10.197.64.11", "10.197.64.12", "10.197.64.13"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn compose(args: &[&str]) -> Output {
    let out = Command::new("docker-compose")
        .current_dir(repo())
        .args(["-f", "docker/docker-compose.yml", "-p", PROJECT])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "docker-compose {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn docker_available() -> bool {
    let ok = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ok("docker", "info") && ok("docker-compose", "version")
}

/// Removes the containers and the network however the test ends.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in ["node1", "node2", "node3"] {
                let out = compose(&["logs", "--tail", "40", n]);
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        compose(&["down", "-v", "-t", "5"]);
    }
}

/// `phxctl status --json` run inside a running node's container.
fn status(nodes: &[&str]) -> Option<serde_json::Value> {
    for n in nodes {
        let out = compose(&["exec", "-T", n, "phxctl", "status", "--json"]);
        if out.status.success()
            && let Ok(v) = serde_json::from_slice(&out.stdout)
        {
            return Some(v);
        }
    }
    None
}

fn master(s: &serde_json::Value) -> Option<usize> {
    let nodes = s["nodes"].as_array()?;
    let m: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n["role"] == "master")
        .map(|(i, _)| i)
        .collect();
    (m.len() == 1).then(|| m[0])
}

fn opts(addr: &str, port: u16) -> mysql_async::Opts {
    OptsBuilder::default()
        .ip_or_hostname(addr)
        .tcp_port(port)
        .user(Some("phxsql_admin"))
        .pass(Some("docker-admin-password"))
        .prefer_socket(false)
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_cluster_fails_over() {
    if std::env::var_os("PHXSQL_SKIP_DOCKER").is_some() || !docker_available() {
        eprintln!(
            "skipped: no Docker engine or docker-compose here (or PHXSQL_SKIP_DOCKER is set)"
        );
        return;
    }
    let bin = workspace_binary("phxbinlogsvr");
    workspace_binary("phxsqlproxy");
    let bin_dir = bin.parent().unwrap();
    assert!(bin_dir.join("phxctl").is_file());
    let out = Command::new(repo().join("docker/build-image.sh"))
        .arg(bin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    compose(&["down", "-v", "-t", "1"]);
    let _down = Down;
    assert!(compose(&["up", "-d"]).status.success());
    let all = ["node1", "node2", "node3"];
    let mut m = 0;
    wait_until(
        "a master, every node healthy",
        Duration::from_secs(300),
        async || match status(&all) {
            Some(s) => {
                let healthy = s["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.iter().all(|n| n["health"] == "ok"));
                match master(&s) {
                    Some(i) if healthy => {
                        m = i;
                        true
                    }
                    _ => false,
                }
            }
            None => false,
        },
    )
    .await;

    // Write through a replica's read-write port, read through the third
    // node's read-only port.
    let (a, b) = ((m + 1) % 3, (m + 2) % 3);
    let mut w = mysql_async::Conn::new(opts(ADDRS[a], 17003)).await.unwrap();
    w.query_drop(
        "CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY); INSERT INTO d.t VALUES (1)",
    )
    .await
    .unwrap();
    drop(w);
    let mut r = mysql_async::Conn::new(opts(ADDRS[b], 17004)).await.unwrap();
    wait_until(
        "the row on another node",
        Duration::from_secs(30),
        async || {
            r.query_first::<u64, _>("SELECT COUNT(*) FROM d.t")
                .await
                .ok()
                .flatten()
                == Some(1)
        },
    )
    .await;
    drop(r);

    // Stop the master's container: another node takes writes.
    assert!(compose(&["stop", "-t", "1", all[m]]).status.success());
    let survivors = [all[a], all[b]];
    wait_until("a new master", Duration::from_secs(60), async || {
        status(&survivors)
            .and_then(|s| master(&s))
            .is_some_and(|i| i != m)
    })
    .await;
    let mut inserted = false;
    wait_until(
        "a write on the new master",
        Duration::from_secs(30),
        async || {
            let Ok(mut w) = mysql_async::Conn::new(opts(ADDRS[a], 17003)).await else {
                return false;
            };
            inserted = w.query_drop("INSERT INTO d.t VALUES (2)").await.is_ok();
            inserted
        },
    )
    .await;
    let mut r = mysql_async::Conn::new(opts(ADDRS[b], 17004)).await.unwrap();
    wait_until(
        "both rows on a survivor",
        Duration::from_secs(30),
        async || {
            r.query_first::<u64, _>("SELECT COUNT(*) FROM d.t")
                .await
                .ok()
                .flatten()
                == Some(2)
        },
    )
    .await;
}
