//! `phxctl local up|down`: every node of the cluster file on this machine.
//!
//! `up` starts, per node, `phxbinlogsvr --supervise-mariadb` (which
//! initialises and runs the node's `mariadbd`) and `phxsqlproxy`, detached
//! in their own process groups, with their logs and pid files in the node's
//! `data_dir`; it then waits for a master and prints how to connect. `down`
//! stops them with SIGTERM (each binlog server stops its `mariadbd`
//! cleanly) and waits for them to exit. Running `up` again restarts only
//! what is not running.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use phxsql_config::{ClusterConfig, NodeConfig};

/// How long `up` waits for a master (the first start initialises every
/// MariaDB data directory).
const UP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `down` waits for the processes to exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(90);

/// The demo application account `up` creates (database `demo`).
pub const DEMO_USER: &str = "demo";
pub const DEMO_PASSWORD: &str = "demo-password";

/// The daemons of a node, in start order.
const DAEMONS: [&str; 2] = ["phxbinlogsvr", "phxsqlproxy"];

fn pid_file(node: &NodeConfig, daemon: &str) -> PathBuf {
    node.data_dir.join(format!("{daemon}.pid"))
}

fn log_file(node: &NodeConfig, daemon: &str) -> PathBuf {
    node.data_dir.join(format!("{daemon}.log"))
}

/// The pid in `path` if that process is alive and is `daemon` (not a pid
/// reused by something else, nor a zombie: those have no command line).
fn running(path: &Path, daemon: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    argv0.ends_with(daemon.as_bytes()).then_some(pid)
}

/// Our daemons: next to this executable (`cargo build --release --bins`
/// puts them together).
fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating phxctl")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found next to phxctl: build every binary (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

fn check_local(cfg: &ClusterConfig) -> Result<()> {
    for n in &cfg.nodes {
        let local = n.bind.is_loopback()
            || n.bind.is_unspecified()
            || n.host == "localhost"
            || std::net::TcpListener::bind((n.bind, 0)).is_ok();
        if !local {
            bail!(
                "{}: node {} listens on {}, not an address of this machine; `phxctl local` runs clusters whose nodes all live here",
                cfg.source.display(),
                n.name,
                n.bind
            );
        }
    }
    Ok(())
}

/// Fails, naming the log to read, when a node's daemon has exited.
fn all_alive(nodes: &[&NodeConfig]) -> Result<()> {
    for node in nodes {
        for daemon in DAEMONS {
            if running(&pid_file(node, daemon), daemon).is_none() {
                let log = log_file(node, daemon);
                let tail = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(3).collect();
                bail!(
                    "{}'s {daemon} exited; the end of {}:\n{}",
                    node.name,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    Ok(())
}

/// The nodes an action applies to: `only`, or all.
fn selected<'a>(cfg: &'a ClusterConfig, only: Option<&str>) -> Result<Vec<&'a NodeConfig>> {
    match only {
        Some(name) => Ok(vec![cfg.node(name)?]),
        None => Ok(cfg.nodes.iter().collect()),
    }
}

pub async fn up(cfg: &ClusterConfig, only: Option<&str>) -> Result<()> {
    check_local(cfg)?;
    let nodes = selected(cfg, only)?;
    let config = fs::canonicalize(&cfg.source)
        .with_context(|| format!("reading {}", cfg.source.display()))?;
    // Debian installs mariadbd in /usr/sbin, which is not on every PATH.
    let path = match std::env::var("PATH") {
        Ok(p) if p.split(':').any(|d| d == "/usr/sbin") => p,
        Ok(p) => format!("{p}:/usr/sbin"),
        Err(_) => "/usr/local/bin:/usr/bin:/bin:/usr/sbin".into(),
    };
    for node in &nodes {
        fs::create_dir_all(&node.data_dir)
            .with_context(|| format!("creating {}", node.data_dir.display()))?;
        for daemon in DAEMONS {
            let pid_path = pid_file(node, daemon);
            if let Some(pid) = running(&pid_path, daemon) {
                println!("{} {daemon}: already running (pid {pid})", node.name);
                continue;
            }
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_file(node, daemon))
                .with_context(|| format!("opening {}", log_file(node, daemon).display()))?;
            let mut cmd = Command::new(binary(daemon)?);
            cmd.arg("--config")
                .arg(&config)
                .args(["--node", &node.name])
                .env("PATH", &path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group: a Ctrl-C meant for this terminal
                // does not reach the cluster.
                .process_group(0);
            if daemon == "phxbinlogsvr" {
                cmd.arg("--supervise-mariadb");
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {daemon} for {}", node.name))?;
            fs::write(&pid_path, child.id().to_string())
                .with_context(|| format!("writing {}", pid_path.display()))?;
            // Until its exec is done, the child's command line is still
            // ours: wait for it, so the pid file checks below hold.
            let t0 = Instant::now();
            while running(&pid_path, daemon).is_none() {
                if child.try_wait().ok().flatten().is_some()
                    || t0.elapsed() > Duration::from_secs(5)
                {
                    all_alive(&[node])?;
                    bail!("{} {daemon} did not start", node.name);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            println!("{} {daemon}: started (pid {})", node.name, child.id());
        }
    }

    // Wait for a master, showing progress.
    let start = Instant::now();
    let mut last_note = Instant::now();
    let master = crate::wait_for_master(
        cfg,
        UP_TIMEOUT,
        "waiting for a master (the first start initialises every MariaDB data directory)",
        || all_alive(&nodes),
    )
    .await
    .with_context(|| {
        format!(
            "logs in each node's data_dir (e.g. {})",
            log_file(&cfg.nodes[0], "phxbinlogsvr").display()
        )
    })?;
    // Every node up and in its role (a slower node may still be
    // initialising its MariaDB).
    loop {
        let mut pending = Vec::new();
        for node in &nodes {
            let ready = crate::admin(cfg, node)
                .get_json("/route")
                .await
                .is_ok_and(|r| {
                    matches!(r["agent"]["role"].as_str(), Some("replica" | "master"))
                        && r["agent"]["proxy_alive"] != false
                });
            if !ready {
                pending.push(node.name.as_str());
            }
        }
        if pending.is_empty() {
            break;
        }
        all_alive(&nodes)?;
        if start.elapsed() > UP_TIMEOUT {
            bail!(
                "{} not ready after {UP_TIMEOUT:?}; see their logs in data_dir",
                pending.join(", ")
            );
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            last_note = Instant::now();
            println!("waiting for {} to join ...", pending.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = cfg.node(&master)?;
    create_demo_account(cfg, m).await?;
    println!();
    crate::status::print(cfg, false).await?;
    println!("\n{master} is the master. Connect to any node:");
    for n in &cfg.nodes {
        println!(
            "  {}: read-write  mariadb -h {} -P {} -u {DEMO_USER} -p{DEMO_PASSWORD} demo",
            n.name, n.host, n.proxy_rw_port
        );
        println!(
            "  {}: read-only   mariadb -h {} -P {} -u {DEMO_USER} -p{DEMO_PASSWORD} demo",
            n.name, n.host, n.proxy_ro_port
        );
    }
    let other = cfg
        .nodes
        .iter()
        .find(|n| n.name != master)
        .map_or("node2", |n| n.name.as_str());
    let cfg_arg = cfg.source.display();
    // As this command was invoked (e.g. target/release/phxctl).
    let me = std::env::args().next().unwrap_or_else(|| "phxctl".into());
    println!(
        "\nStatus:      {me} -c {cfg_arg} status\n\
         Switchover:  {me} -c {cfg_arg} switchover --to {other}\n\
         Failover:    kill -9 $(cat {}) and watch `{me} -c {cfg_arg} status`\n\
         Stop:        {me} -c {cfg_arg} local down",
        pid_file(m, "phxbinlogsvr").display()
    );
    Ok(())
}

/// The demo account and database, created through the master's read-write
/// port (so it is replicated like any write) with the admin account.
async fn create_demo_account(cfg: &ClusterConfig, master: &NodeConfig) -> Result<()> {
    use mysql_async::prelude::Queryable;
    let admin = &cfg.credentials.mariadb_admin;
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(master.host.clone())
        .tcp_port(master.proxy_rw_port)
        .user(Some(admin.user.clone()))
        .pass(Some(admin.password.expose().to_string()))
        .prefer_socket(false)
        .into();
    let work = async {
        let mut conn = mysql_async::Conn::new(opts).await?;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS demo; \
             CREATE USER IF NOT EXISTS '{DEMO_USER}'@'%' IDENTIFIED BY '{DEMO_PASSWORD}'; \
             GRANT ALL ON demo.* TO '{DEMO_USER}'@'%'"
        ))
        .await?;
        conn.disconnect().await?;
        Ok::<_, mysql_async::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .context("creating the demo account: no answer within 30 s")?
        .context("creating the demo account through the read-write port")
}

pub async fn down(cfg: &ClusterConfig, only: Option<&str>) -> Result<()> {
    check_local(cfg)?;
    let nodes = selected(cfg, only)?;
    // Proxies first (clients stop arriving), then the binlog servers.
    let mut waiting = Vec::new();
    for daemon in DAEMONS.iter().rev() {
        for node in &nodes {
            let path = pid_file(node, daemon);
            match running(&path, daemon) {
                Some(pid) => {
                    // SAFETY: sending SIGTERM to a pid we started.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    waiting.push((node.name.clone(), *daemon, pid, path));
                }
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    if waiting.is_empty() {
        println!("nothing is running");
        return Ok(());
    }
    let start = Instant::now();
    let mut last_note = Instant::now();
    while !waiting.is_empty() {
        waiting.retain(|(name, daemon, _, path)| {
            let alive = running(path, daemon).is_some();
            if !alive {
                println!("{name} {daemon}: stopped");
                let _ = fs::remove_file(path);
            }
            alive
        });
        if waiting.is_empty() {
            break;
        }
        if start.elapsed() > DOWN_TIMEOUT {
            bail!(
                "still running after {DOWN_TIMEOUT:?}: {}",
                waiting
                    .iter()
                    .map(|(n, d, p, _)| format!("{n} {d} (pid {p})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            last_note = Instant::now();
            println!(
                "waiting for {} process(es) to stop (MariaDB flushes its data) ...",
                waiting.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
