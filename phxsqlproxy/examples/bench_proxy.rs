//! The proxy's cost, measured side by side in one run:
//!
//! 1. sysbench `oltp_point_select`, 16 threads: straight to a replica's
//!    MariaDB and through that node's read-only port, alternated
//!    (direct, proxy, direct, proxy, ...); QPS, p95 and the ratio. When
//!    `haproxy` is installed, a third path for reference: HAProxy in TCP
//!    mode in front of the same MariaDB (also sending a PROXY v2 header,
//!    with as many threads as the proxy), the best-known TCP relay, so the
//!    ratio shows what a user-space hop costs on this machine at all.
//! 2. The proxy's resident memory with 5,000 idle client connections open
//!    through its read-only port (each with its backend connection).
//!
//! ```text
//! cargo build --release -p phxsqlproxy -p phxbinlogsvr --bins --examples
//! target/release/examples/bench_proxy                 # 2 rounds of 30 s per path
//! target/release/examples/bench_proxy --time 10 --rounds 1 --idle 5000
//! ```
//!
//! The cluster is the proxy tests' one (tests/support): three real
//! `mariadbd`, three `phxbinlogsvr --agent`, three `phxsqlproxy`, all on
//! this machine. sysbench and the servers share its CPUs, so the ratio is
//! what counts, not the absolute QPS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use support::{ProxyCluster, Setup};
use testkit::{APP_PASSWORD, APP_USER};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(
    about = "phxsqlproxy: point-select QPS direct vs through the RO port; RSS with idle connections"
)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 30)]
    time: u64,
    /// Rounds (each: direct, then proxy).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    #[arg(long, default_value_t = 16)]
    threads: u32,
    /// Idle connections for the memory figure.
    #[arg(long, default_value_t = 5000)]
    idle: usize,
    /// `phxsqlproxy --threads` (default: one per CPU).
    #[arg(long)]
    proxy_threads: Option<usize>,
    /// Skip the HAProxy reference even when `haproxy` is installed.
    #[arg(long)]
    no_haproxy: bool,
}

/// HAProxy in TCP mode relaying one port to `backend`, killed on drop.
struct HaProxy {
    child: std::process::Child,
    port: u16,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// `None` when `haproxy` is not installed.
    fn start(backend: u16, threads: usize) -> Result<Option<HaProxy>> {
        if Command::new("haproxy").arg("-v").output().is_err() {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 4000\n  nbthread {threads}\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
                 listen mariadb\n  bind 127.0.0.1:{port}\n  server db 127.0.0.1:{backend} send-proxy-v2\n"
            ),
        )?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting haproxy")?;
        let pid = child.id();
        // Listening?
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(HaProxy {
                    child,
                    port,
                    pid,
                    _dir: dir,
                }));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("haproxy did not listen on {port}")
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    qps: f64,
    p95_ms: f64,
}

fn num_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let token = rest.split_whitespace().next()?;
    token.trim_start_matches('(').parse().ok()
}

fn sysbench(port: u16, args: &Args, cmd: &str) -> Result<String> {
    let out = Command::new("sysbench")
        .args([
            "oltp_point_select",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
        ])
        .arg(format!("--mysql-port={port}"))
        .arg(format!("--mysql-user={APP_USER}"))
        .arg(format!("--mysql-password={APP_PASSWORD}"))
        .args(["--tables=4", "--table-size=10000"])
        .arg(format!("--threads={}", args.threads))
        .arg(format!("--time={}", args.time))
        .arg("--percentile=95")
        .arg(cmd)
        .output()
        .context("running sysbench (apt-get install -y sysbench)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "sysbench {cmd}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn parse(text: &str) -> Result<Run> {
    // "queries: 123456 (4115.20 per sec.)"
    let queries = text
        .lines()
        .find(|l| l.trim_start().starts_with("queries:"))
        .context("no queries line")?;
    let qps = queries
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no QPS")?;
    let p95_ms = num_after(text, "95th percentile:").context("no p95")?;
    Ok(Run { qps, p95_ms })
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(4 * args.idle as u64 + 1024);
    let c = ProxyCluster::start(
        "bench-proxy",
        Setup {
            proxy_yaml: format!(
                "max_connections: {}, connect_timeout: 2s, master_wait_timeout: 5s",
                args.idle + 1000
            ),
            mariadb_options: vec![
                ("max_connections".into(), (args.idle + 1000).to_string()),
                ("connect_timeout".into(), "600".into()),
                ("innodb_buffer_pool_size".into(), "128M".into()),
            ],
            proxy_args: args
                .proxy_threads
                .map(|n| vec!["--threads".to_string(), n.to_string()])
                .unwrap_or_default(),
            proxies: [true; 3],
        },
    )
    .await;
    let m = c.wait_master(Duration::from_secs(60)).await;
    let r = (m + 1) % 3;
    let (direct, ro, rw) = (c.dbs[r].port(), c.ports[r].ro, c.ports[m].rw);
    let proxy_pid = c.proxies[r]
        .as_ref()
        .and_then(|p| p.pid())
        .context("proxy pid")?;
    println!(
        "master node{}, measuring on node{} (MariaDB :{direct}, RO port :{ro})",
        m + 1,
        r + 1
    );

    c.dbs[m].exec("CREATE DATABASE sbtest").await?;
    sysbench(rw, &args, "prepare")?;
    let pos = c.dbs[m].gtid_binlog_pos().await?;
    c.dbs[r]
        .wait_for_gtid(&pos, Duration::from_secs(120))
        .await?;

    let threads = args.proxy_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let haproxy = if args.no_haproxy {
        None
    } else {
        // A reference only: without it the proxy's figures still stand.
        HaProxy::start(direct, threads).unwrap_or_else(|e| {
            println!("(haproxy did not start: {e:#})");
            None
        })
    };
    if haproxy.is_none() {
        println!(
            "(haproxy not installed or skipped: no reference path; apt-get install -y haproxy)"
        );
    }
    let mut direct_runs = Vec::new();
    let mut proxy_runs = Vec::new();
    let mut haproxy_runs = Vec::new();
    for round in 1..=args.rounds {
        let d = parse(&sysbench(direct, &args, "run")?)?;
        println!(
            "round {round} direct: {:.0} QPS, p95 {:.2} ms",
            d.qps, d.p95_ms
        );
        let cpu0 = cpu_secs(proxy_pid);
        let p = parse(&sysbench(ro, &args, "run")?)?;
        let cpu = (cpu_secs(proxy_pid) - cpu0) / args.time as f64;
        println!(
            "round {round} proxy:  {:.0} QPS, p95 {:.2} ms (proxy CPU {:.2} cores)",
            p.qps, p.p95_ms, cpu
        );
        direct_runs.push(d);
        proxy_runs.push(p);
        if let Some(h) = &haproxy {
            let cpu0 = cpu_secs(h.pid);
            let run = parse(&sysbench(h.port, &args, "run")?)?;
            let cpu = (cpu_secs(h.pid) - cpu0) / args.time as f64;
            println!(
                "round {round} haproxy: {:.0} QPS, p95 {:.2} ms (haproxy CPU {:.2} cores)",
                run.qps, run.p95_ms, cpu
            );
            haproxy_runs.push(run);
        }
    }
    let mean = |v: &[Run], f: fn(&Run) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let (dq, pq) = (mean(&direct_runs, |r| r.qps), mean(&proxy_runs, |r| r.qps));
    println!();
    println!("| path | QPS | p95 ms |");
    println!("|---|---:|---:|");
    println!(
        "| direct to MariaDB | {dq:.0} | {:.2} |",
        mean(&direct_runs, |r| r.p95_ms)
    );
    println!(
        "| through the RO port | {pq:.0} | {:.2} |",
        mean(&proxy_runs, |r| r.p95_ms)
    );
    if !haproxy_runs.is_empty() {
        println!(
            "| through HAProxy (tcp mode, reference) | {:.0} | {:.2} |",
            mean(&haproxy_runs, |r| r.qps),
            mean(&haproxy_runs, |r| r.p95_ms)
        );
    }
    println!("proxy / direct QPS: {:.3}", pq / dq);
    if !haproxy_runs.is_empty() {
        let hq = mean(&haproxy_runs, |r| r.qps);
        println!(
            "haproxy / direct QPS: {:.3}; proxy / haproxy QPS: {:.3}",
            hq / dq,
            pq / hq
        );
    }
    drop(haproxy);

    // Memory with idle connections.
    let before = rss_kib(proxy_pid);
    let mut idle = Vec::with_capacity(args.idle);
    for _ in 0..args.idle {
        let mut s = TcpStream::connect(("127.0.0.1", ro)).await?;
        // The greeting came through: the backend connection exists.
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await?;
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(proxy_pid);
    println!(
        "proxy RSS: {:.1} MB before, {:.1} MB with {} idle connections ({:.2} KiB per connection)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        idle.len(),
        (after.saturating_sub(before)) as f64 / idle.len() as f64
    );
    drop(idle);
    Ok(())
}
