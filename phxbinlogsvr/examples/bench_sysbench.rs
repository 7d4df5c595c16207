//! sysbench `oltp_write_only` against the master of (a) our 3 nodes (real
//! `mariadbd` + `phxbinlogsvr` each, commits acknowledged once chosen through
//! Paxos) and (b) MariaDB with two ordinary semi-sync replicas (AFTER_SYNC),
//! all on this machine, in one run; the systems are measured alternately
//! (a, b, a, b, ...) and a table of TPS and p95/p99 latency is printed.
//! Besides the master's TPS it prints the *replicated* TPS: a run's
//! transactions over the time until both replicas had applied them (run +
//! catch-up), the rate the whole cluster sustained.
//!
//! ```text
//! apt-get install -y sysbench mariadb-server mariadb-client
//! cargo build --release -p phxbinlogsvr --bins --examples
//! target/release/examples/bench_sysbench   # 16 threads, 60 s per system as 2 rounds of 30 s
//! target/release/examples/bench_sysbench --help
//! ```
//!
//! The binlog server binary is looked for next to the example's directory
//! (`target/release/phxbinlogsvr`; `--phxbinlogsvr PATH` to override): build
//! it in release first, as above (`cargo run --example` does not build it).
//!
//! Set-up, per system: three testkit instances (the kit's durable settings:
//! `sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`, ROW, GTID strict;
//! 64 MiB buffer pool). The master is a lossless semi-sync master
//! (AFTER_SYNC, `wait_no_slave=ON`, timeout ~49 days: never falls back to
//! async); the replicas start with `--rpl-semi-sync-slave-enabled=ON`. In (a)
//! the master's one semi-sync client is node 1's binlog server (nodes 2 and
//! 3 run `--no-campaign`) and the replicas replicate from their own binlog
//! server; in (b) the replicas replicate from the master directly.
//!
//! Before every measurement: the replicas have caught up with the master
//! (`MASTER_GTID_WAIT`), `Rpl_semi_sync_master_clients` is what it should
//! be (a: 1, b: 2), each semi-sync replica reports
//! `Rpl_semi_sync_slave_status=ON`, and a probe commit raises
//! `Rpl_semi_sync_master_yes_tx` while `_no_tx` stays 0 (checked again after
//! the run). The bench stops with an error if any of these fails.
//!
//! `RUST_LOG` is passed to the binlog servers (default `warn`); `--keep-logs`
//! prints where their logs are and keeps them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use testkit::{MariaDb, REPL_PASSWORD, REPL_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_USER: &str = "phxadmin";
const ADMIN_PASSWORD: &str = "admin-secret";
const SYSBENCH_INSTALL: &str = "apt-get install -y sysbench";

#[derive(Parser, Debug, Clone)]
#[command(
    about = "sysbench oltp_write_only: phxbinlogsvr 3 nodes vs MariaDB semi-sync, side by side"
)]
struct Args {
    /// sysbench threads.
    #[arg(long, default_value_t = 16)]
    threads: u32,
    /// Measured seconds per system in total, split evenly over the rounds
    /// (default: 60 s = 2 runs of 30 s each).
    #[arg(long, default_value_t = 60)]
    time: u32,
    /// Rounds: each round runs (a) then (b), `time / rounds` seconds each.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// sysbench tables.
    #[arg(long, default_value_t = 4)]
    tables: u32,
    /// Rows per sysbench table.
    #[arg(long, default_value_t = 10_000)]
    table_size: u32,
    /// Seconds to wait for replicas to catch up after a run.
    #[arg(long, default_value_t = 600)]
    catch_up_timeout: u64,
    /// The phxbinlogsvr binary (default: `../phxbinlogsvr` from this example).
    #[arg(long)]
    phxbinlogsvr: Option<PathBuf>,
    /// Keep the binlog servers' logs and sysbench outputs (prints where).
    #[arg(long)]
    keep_logs: bool,
    /// An extra argument for every binlog server (repeatable), e.g.
    /// `--svr-arg=--max-inflight=1`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    svr_arg: Vec<String>,
}

/// A `phxbinlogsvr` process, killed on drop.
struct Svr {
    child: Child,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is 3rd,
    // utime the 14th, stime the 15th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn machine_jiffies() -> (f64, f64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

impl Drop for Svr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
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

async fn is_master(admin_port: u16) -> bool {
    let Ok(Ok((200, body))) =
        tokio::time::timeout(Duration::from_secs(5), http_get(admin_port, "/status")).await
    else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|s| s["is_master"] == true)
}

/// One system under test: a master and two replicas.
struct System {
    label: &'static str,
    what: &'static str,
    master: MariaDb,
    replicas: Vec<MariaDb>,
    /// Semi-sync clients the master must have.
    clients: u64,
    /// Whether the MariaDB replicas are the master's semi-sync clients.
    replicas_semi_sync: bool,
    /// (a) only: node 1's admin port, the binlog servers.
    admin: Option<u16>,
    svrs: Vec<Svr>,
}

async fn start_phx(bin: &Path, dir: &Path, extra_args: &[String]) -> Result<System> {
    let (m1, m2, m3) = tokio::join!(
        MariaDb::builder()
            .name("bench-a1")
            .semi_sync_master(true)
            .start(),
        MariaDb::builder()
            .name("bench-a2")
            .replica_mode(true)
            .start(),
        MariaDb::builder()
            .name("bench-a3")
            .replica_mode(true)
            .start(),
    );
    let dbs = [m1?, m2?, m3?];
    for db in &dbs {
        db.exec(&format!(
            "SET sql_log_bin=0; CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'; \
             GRANT ALL ON *.* TO '{ADMIN_USER}'@'%'"
        ))
        .await?;
    }
    let pv = free_ports(18);
    let mut y = String::from(
        "version: 1\ncluster_id: 4343\nname: bench\nlease: {duration: 2s}\ncredentials:\n",
    );
    let _ = writeln!(
        y,
        "  replication: {{user: {REPL_USER}, password: \"{REPL_PASSWORD}\"}}"
    );
    let _ = writeln!(
        y,
        "  mariadb_admin: {{user: {ADMIN_USER}, password: \"{ADMIN_PASSWORD}\"}}"
    );
    y += "  admin_api: {token: \"bench-token\"}\nnodes:\n";
    for (i, (db, p)) in dbs.iter().zip(pv.chunks(6)).enumerate() {
        let n = i + 1;
        let _ = writeln!(
            y,
            "  - {{name: node{n}, id: {n}, host: 127.0.0.1, paxos_port: {}, binlog_port: {}, admin_port: {}, \
             proxy_rw_port: {}, proxy_ro_port: {}, proxy_admin_port: {}, mariadb_port: {}, data_dir: {}}}",
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            db.port(),
            dir.join(format!("node{n}")).display()
        );
    }
    let cfg = dir.join("cluster.yaml");
    fs::write(&cfg, y)?;
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600))?;
    let mut svrs = Vec::new();
    for n in 1..=3 {
        let log = fs::File::create(dir.join(format!("node{n}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--config", &cfg.display().to_string(), "--node"])
            .arg(format!("node{n}"));
        if n != 1 {
            cmd.arg("--no-campaign");
        }
        cmd.args(extra_args);
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        svrs.push(Svr { child });
    }
    let admin = pv[2];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_master(admin).await {
        ensure!(
            Instant::now() < deadline,
            "node1's binlog server did not take the lease within 60 s (logs in {})",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each replica replicates from its own node's binlog server (the
    // second port of its node's six).
    let binlog_port = |node: usize| pv[node * 6 + 1];
    let [m1, m2, m3] = dbs;
    m2.replicate_from_port(binlog_port(1)).await?;
    m3.replicate_from_port(binlog_port(2)).await?;
    Ok(System {
        label: "a",
        what: "phxbinlogsvr, 3 nodes",
        master: m1,
        replicas: vec![m2, m3],
        clients: 1,
        replicas_semi_sync: false,
        admin: Some(admin),
        svrs,
    })
}

async fn start_semisync() -> Result<System> {
    let (m1, m2, m3) = tokio::join!(
        MariaDb::builder()
            .name("bench-b1")
            .semi_sync_master(true)
            .start(),
        MariaDb::builder()
            .name("bench-b2")
            .replica_mode(true)
            .start(),
        MariaDb::builder()
            .name("bench-b3")
            .replica_mode(true)
            .start(),
    );
    let (m1, m2, m3) = (m1?, m2?, m3?);
    m2.replicate_from(&m1).await?;
    m3.replicate_from(&m1).await?;
    Ok(System {
        label: "b",
        what: "MariaDB semi-sync, 2 replicas",
        master: m1,
        replicas: vec![m2, m3],
        clients: 2,
        replicas_semi_sync: true,
        admin: None,
        svrs: Vec::new(),
    })
}

impl System {
    /// Waits until both replicas have applied the master's binlog.
    async fn catch_up(&self, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        let pos = self.master.gtid_binlog_pos().await?;
        for r in &self.replicas {
            r.wait_for_gtid(&pos, timeout)
                .await
                .with_context(|| format!("({}) {} catching up to {pos}", self.label, r.name()))?;
        }
        Ok(t.elapsed())
    }

    /// The semi-sync conditions of the benchmarking notes; returns a one-line summary.
    async fn verify_semi_sync(&self) -> Result<String> {
        let m = &self.master;
        ensure!(
            m.status_var("Rpl_semi_sync_master_status").await? == "ON",
            "({}) Rpl_semi_sync_master_status is not ON",
            self.label
        );
        let clients = m.status_u64("Rpl_semi_sync_master_clients").await?;
        ensure!(
            clients == self.clients,
            "({}) Rpl_semi_sync_master_clients = {clients}, expected {}",
            self.label,
            self.clients
        );
        let mut slave = Vec::new();
        for r in &self.replicas {
            let s = r.status_var("Rpl_semi_sync_slave_status").await?;
            if self.replicas_semi_sync {
                ensure!(
                    s == "ON",
                    "({}) {}: Rpl_semi_sync_slave_status = {s}",
                    self.label,
                    r.name()
                );
            }
            slave.push(s);
        }
        if let Some(admin) = self.admin {
            ensure!(
                is_master(admin).await,
                "({}) node1's binlog server does not hold the lease",
                self.label
            );
        }
        let yes0 = m.status_u64("Rpl_semi_sync_master_yes_tx").await?;
        let no0 = m.status_u64("Rpl_semi_sync_master_no_tx").await?;
        m.exec(
            "CREATE TABLE IF NOT EXISTS test.probe (id INT PRIMARY KEY, n BIGINT); \
             INSERT INTO test.probe VALUES (1, 1) ON DUPLICATE KEY UPDATE n = n + 1",
        )
        .await?;
        let yes1 = m.status_u64("Rpl_semi_sync_master_yes_tx").await?;
        let no1 = m.status_u64("Rpl_semi_sync_master_no_tx").await?;
        ensure!(
            yes1 > yes0 && no0 == 0 && no1 == 0,
            "({}) probe commit: yes_tx {yes0} -> {yes1}, no_tx {no0} -> {no1}",
            self.label
        );
        Ok(format!(
            "master_clients={clients} replicas' slave_status={} probe: yes_tx {yes0}->{yes1}, no_tx 0",
            slave.join("/")
        ))
    }

    /// CPU seconds used so far by: the master, the two replicas, the binlog servers.
    fn cpu(&self) -> [f64; 3] {
        let db = |d: &MariaDb| d.pid().map_or(0.0, cpu_secs);
        [
            db(&self.master),
            self.replicas.iter().map(db).sum(),
            self.svrs.iter().map(|s| cpu_secs(s.child.id())).sum(),
        ]
    }

    async fn no_tx(&self) -> Result<u64> {
        Ok(self.master.status_u64("Rpl_semi_sync_master_no_tx").await?)
    }

    fn sysbench_args(&self, args: &Args) -> Vec<String> {
        vec![
            "oltp_write_only".into(),
            "--db-driver=mysql".into(),
            "--mysql-host=127.0.0.1".into(),
            format!("--mysql-port={}", self.master.port()),
            "--mysql-user=root".into(),
            "--mysql-db=test".into(),
            format!("--tables={}", args.tables),
            format!("--table-size={}", args.table_size),
        ]
    }
}

/// What one sysbench run printed.
#[derive(Debug, Clone)]
struct Run {
    tps: f64,
    avg_ms: f64,
    p95_sysbench: f64,
    p95: f64,
    p99: f64,
    max_ms: f64,
    errors: u64,
}

fn num_after(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    let rest = line.trim_start()[key.len()..].trim_start();
    rest.split_whitespace().next()?.parse().ok()
}

/// `transactions: N (X per sec.)` -> X.
fn per_sec(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    let inside = line.split('(').nth(1)?;
    inside.split_whitespace().next()?.parse().ok()
}

/// Percentile from sysbench's `--histogram=on` output (values in ms):
/// the smallest bucket value at which the cumulative count reaches `q`.
fn hist_percentile(hist: &[(f64, u64)], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().map(|h| h.1).sum();
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    let mut cum = 0;
    for &(v, c) in hist {
        cum += c;
        if cum >= want {
            return Some(v);
        }
    }
    hist.last().map(|h| h.0)
}

fn parse_histogram(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (v, rest) = l.split_once('|')?;
            let v: f64 = v.trim().parse().ok()?;
            let c: u64 = rest.trim_start_matches('*').trim().parse().ok()?;
            Some((v, c))
        })
        .collect()
}

fn parse_run(out: &str) -> Result<Run> {
    let hist = parse_histogram(out);
    let miss = |what: &str| anyhow!("no {what} in sysbench's output:\n{out}");
    Ok(Run {
        tps: per_sec(out, "transactions:").ok_or_else(|| miss("transactions"))?,
        avg_ms: num_after(out, "avg:").ok_or_else(|| miss("avg"))?,
        p95_sysbench: num_after(out, "95th percentile:").ok_or_else(|| miss("95th percentile"))?,
        p95: hist_percentile(&hist, 0.95).ok_or_else(|| miss("histogram"))?,
        p99: hist_percentile(&hist, 0.99).ok_or_else(|| miss("histogram"))?,
        max_ms: num_after(out, "max:").ok_or_else(|| miss("max"))?,
        errors: num_after(out, "ignored errors:").unwrap_or(0.0) as u64,
    })
}

async fn sysbench(mut sb_args: Vec<String>, extra: &[String]) -> Result<String> {
    sb_args.extend(extra.iter().cloned());
    let out = tokio::task::spawn_blocking(move || Command::new("sysbench").args(&sb_args).output())
        .await??;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "sysbench failed ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Node 1's counters that tell how the write path batched.
async fn phx_counters(admin: u16) -> Vec<(String, f64)> {
    let Ok((200, text)) = http_get(admin, "/metrics").await else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            [
                "store_batches_applied_total",
                "store_transactions_appended_total",
                "semisync_transactions_acked_total",
                "runtime_log_syncs_total",
                "semisync_inflight_at_submit_total",
                "semisync_proposals_total",
                "semisync_inflight_micros_total",
                "semisync_proposals_applied_total",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            let name = name.split('{').next()?.to_string();
            Some((name, v.parse().ok()?))
        })
        .collect()
}

fn counter(c: &[(String, f64)], key: &str) -> f64 {
    c.iter()
        .filter(|(n, _)| n.contains(key))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if Command::new("sysbench").arg("--version").output().is_err() {
        bail!("sysbench not found: install it with `{SYSBENCH_INSTALL}`");
    }
    let bin = match &args.phxbinlogsvr {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("phxbinlogsvr"))
            .ok_or_else(|| anyhow!("cannot locate the target directory"))?,
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p phxbinlogsvr --bins --examples` \
             (or pass --phxbinlogsvr PATH)",
            bin.display()
        );
    }
    let tmp = tempfile::Builder::new().prefix("phx-bench-").tempdir()?;
    let dir = if args.keep_logs {
        let p = tmp.keep();
        println!("logs and sysbench outputs: {}", p.display());
        p
    } else {
        tmp.path().to_path_buf()
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "sysbench oltp_write_only: {} threads, {} s per system in {} rounds of {} s (a, b alternately), \
         {} tables x {} rows; {cpus} CPUs; phxbinlogsvr = {}",
        args.threads,
        args.time,
        args.rounds,
        args.time / args.rounds.max(1),
        args.tables,
        args.table_size,
        bin.display()
    );

    let t0 = Instant::now();
    let (a, b) = tokio::join!(start_phx(&bin, &dir, &args.svr_arg), start_semisync());
    let (a, b) = (a?, b?);
    println!("both systems up after {:.1?}", t0.elapsed());
    for s in [&a, &b] {
        let t = Instant::now();
        sysbench(s.sysbench_args(&args), &["prepare".to_string()]).await?;
        let c = s
            .catch_up(Duration::from_secs(args.catch_up_timeout))
            .await?;
        println!(
            "({}) prepared in {:.1?} (replicas caught up {:.1?} after)",
            s.label,
            t.elapsed(),
            c
        );
    }

    ensure!(
        args.rounds > 0 && args.time >= args.rounds,
        "--time must be >= --rounds > 0"
    );
    let run_secs = args.time / args.rounds;
    let run_args = vec![
        format!("--threads={}", args.threads),
        format!("--time={run_secs}"),
        "--percentile=95".into(),
        "--histogram=on".into(),
        "--report-interval=0".into(),
        "run".into(),
    ];
    let mut results: Vec<(u32, &System, Run, Duration, String)> = Vec::new();
    let mut batching = Vec::new();
    let mut cpu_lines = Vec::new();
    for round in 1..=args.rounds {
        for s in [&a, &b] {
            let pre = s
                .catch_up(Duration::from_secs(args.catch_up_timeout))
                .await?;
            let check = s.verify_semi_sync().await?;
            let before = match s.admin {
                Some(p) => phx_counters(p).await,
                None => Vec::new(),
            };
            let load = loadavg();
            let cpu0 = s.cpu();
            let idle0 = a.cpu()[2];
            let m0 = machine_jiffies();
            println!(
                "round {round} ({}) {}: checks OK: {check}; load {load}",
                s.label, s.what
            );
            let out = sysbench(s.sysbench_args(&args), &run_args).await?;
            fs::write(dir.join(format!("sysbench-{round}-{}.txt", s.label)), &out)?;
            let run = parse_run(&out)?;
            let cpu1 = s.cpu();
            let idle1 = a.cpu()[2];
            let m1 = machine_jiffies();
            let busy = 100.0 * (m1.0 - m0.0) / (m1.1 - m0.1).max(1.0);
            let c = |i: usize| (cpu1[i] - cpu0[i]) / f64::from(run_secs);
            cpu_lines.push(format!(
                "round {round} ({}): machine CPU busy {busy:.0}%; CPUs used: master mariadbd {:.2}, \
                 replicas' mariadbd {:.2}, (a)'s 3 binlog servers {:.2}{}",
                s.label,
                c(0),
                c(1),
                (idle1 - idle0) / f64::from(run_secs),
                if s.admin.is_some() { "" } else { " (idle: (b) runs)" }
            ));
            let no_tx = s.no_tx().await?;
            ensure!(
                no_tx == 0,
                "({}) Rpl_semi_sync_master_no_tx = {no_tx} after the run",
                s.label
            );
            if let Some(p) = s.admin {
                let after = phx_counters(p).await;
                let d = |k: &str| counter(&after, k) - counter(&before, k);
                let (micros, applied) = (
                    d("semisync_inflight_micros_total"),
                    d("semisync_proposals_applied_total"),
                );
                let (batches, txns, syncs, depth, proposals) = (
                    d("store_batches_applied_total"),
                    d("store_transactions_appended_total"),
                    d("runtime_log_syncs_total"),
                    d("semisync_inflight_at_submit_total"),
                    d("semisync_proposals_total"),
                );
                if batches > 0.0 {
                    batching.push(format!(
                        "round {round}: {txns:.0} transactions in {batches:.0} Paxos values \
                         ({:.2} per value, {:.0} values/s, one value per {:.2} ms, {:.2} others in flight at each submit, \
                         {:.2} ms from submit to ACK); node 1's Paxos log fsyncs: {:.2} per value",
                        txns / batches,
                        batches / f64::from(run_secs),
                        1000.0 * f64::from(run_secs) / batches,
                        depth / proposals.max(1.0),
                        micros / 1000.0 / applied.max(1.0),
                        syncs / batches
                    ));
                }
            }
            let lag = s
                .catch_up(Duration::from_secs(args.catch_up_timeout))
                .await?;
            println!(
                "round {round} ({}): {:.1} TPS, p95 {:.2} ms, p99 {:.2} ms; replicas caught up {:.1?} after \
                 (were {:.1?} before)",
                s.label, run.tps, run.p95, run.p99, lag, pre
            );
            results.push((round, s, run, lag, load));
        }
    }

    println!();
    println!(
        "| round | system | TPS | avg ms | p95 ms | p99 ms | max ms | errors | replica catch-up | load avg before |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (round, s, r, lag, load) in &results {
        println!(
            "| {round} | ({}) {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1?} | {load} |",
            s.label, s.what, r.tps, r.avg_ms, r.p95, r.p99, r.max_ms, r.errors, lag
        );
    }
    println!();
    println!("| round | TPS a/b | p95 a/b | p99 a/b | replicated TPS a/b |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    // "Replicated" TPS: the run's transactions over the time until every
    // replica had applied them (run + catch-up). A master can outrun its
    // replicas for a while; this is the rate the whole cluster sustained.
    let replicated = |r: &Run, lag: Duration| {
        r.tps * f64::from(run_secs) / (f64::from(run_secs) + lag.as_secs_f64())
    };
    let mut sum = [0.0f64; 2];
    let mut sum_replicated = [0.0f64; 2];
    for round in 1..=args.rounds {
        let get = |l: &str| {
            results
                .iter()
                .find(|(r, s, ..)| *r == round && s.label == l)
                .map(|x| (x.2.clone(), x.3))
        };
        if let (Some((ra, lag_a)), Some((rb, lag_b))) = (get("a"), get("b")) {
            sum[0] += ra.tps;
            sum[1] += rb.tps;
            let (rep_a, rep_b) = (replicated(&ra, lag_a), replicated(&rb, lag_b));
            sum_replicated[0] += rep_a;
            sum_replicated[1] += rep_b;
            println!(
                "| {round} | {:.2} | {:.2} | {:.2} | {:.2} |",
                ra.tps / rb.tps,
                ra.p95 / rb.p95,
                ra.p99 / rb.p99,
                rep_a / rep_b
            );
        }
    }
    println!(
        "\nall rounds: (a) {:.1} TPS, (b) {:.1} TPS mean; a/b = {:.2} (target >= 0.90)",
        sum[0] / f64::from(args.rounds),
        sum[1] / f64::from(args.rounds),
        sum[0] / sum[1]
    );
    println!(
        "replicated TPS (transactions / (run + replica catch-up)): (a) {:.1}, (b) {:.1} mean; a/b = {:.2}",
        sum_replicated[0] / f64::from(args.rounds),
        sum_replicated[1] / f64::from(args.rounds),
        sum_replicated[0] / sum_replicated[1]
    );
    println!(
        "p95/p99: from sysbench's latency histogram (per transaction, ms); sysbench's own \
         95th percentile agrees: {}",
        results
            .iter()
            .map(|(_, s, r, ..)| format!("{}:{:.2}", s.label, r.p95_sysbench))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for l in &cpu_lines {
        println!("{l}");
    }
    for l in &batching {
        println!("(a) write path, {l}");
    }
    Ok(())
}
