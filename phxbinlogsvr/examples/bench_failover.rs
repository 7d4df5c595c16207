//! Failover time, measured: three nodes on this machine (real `mariadbd`
//! from testkit, `phxbinlogsvr --agent`), a client writing to the master;
//! then kill -9 every process of the master node (its `mariadbd` and its
//! binlog server) and time until a write is acknowledged by the new master
//! (the client tries every surviving node every 10 ms, as the application
//! account, which `read_only` stops). The old node is then restarted (its
//! MariaDB as a replica, which rolls back what was never acknowledged) and
//! rejoins; the next run kills whoever is master then. At the end every
//! acknowledged write must be on every node.
//!
//! ```text
//! cargo build --release -p phxbinlogsvr --bins --examples
//! target/release/examples/bench_failover [--runs 10] [--lease 2s]
//! ```
//!
//! Prints one line per run and the median and maximum. `RUST_LOG` is passed
//! to the binlog servers (default `warn`); `--keep-logs` keeps their logs.
//!
//! Then switchover write downtime: a client writes all along to whichever
//! node takes its writes, while `POST /switchover` moves the master around
//! every ordered pair of nodes (`--switchovers`, default 6); the downtime of
//! one switchover is the longest gap between two acknowledged writes from
//! the request until writes flow on the new master.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use testkit::mysql_async::prelude::Queryable;
use testkit::{APP_PASSWORD, APP_USER, MariaDb, REPL_PASSWORD, REPL_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_USER: &str = "phxadmin";
const ADMIN_PASSWORD: &str = "admin-secret";
const ADMIN_TOKEN: &str = "bench-token";

#[derive(Parser, Debug)]
#[command(about = "failover time of a 3-node phxbinlogsvr cluster: kill -9 the master node")]
struct Args {
    /// Failovers to measure.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// The lease (`lease.duration` in the cluster file).
    #[arg(long, default_value = "2s")]
    lease: String,
    /// The phxbinlogsvr binary (default: `../phxbinlogsvr` from this example).
    #[arg(long)]
    phxbinlogsvr: Option<PathBuf>,
    /// Keep the binlog servers' logs (prints where).
    #[arg(long)]
    keep_logs: bool,
    /// Switchovers to measure after the failovers (0: none).
    #[arg(long, default_value_t = 6)]
    switchovers: u32,
}

/// `POST /switchover {"to": node}` with the cluster's admin token, through
/// the admin API client phxctl uses; (status code, body). The answer comes
/// after the drain (at most 5 s) and the hand-over.
async fn switchover(admin: u16, to: &str) -> Result<(u16, String)> {
    let mut client = phxsql_adminapi::AdminClient::new(
        format!("127.0.0.1:{admin}"),
        Some(ADMIN_TOKEN.to_string()),
        Duration::from_secs(30),
    );
    let (code, body) = client
        .request(
            phxsql_adminapi::Method::POST,
            "/switchover",
            Some(&serde_json::json!({ "to": to })),
        )
        .await?;
    Ok((code.as_u16(), String::from_utf8_lossy(&body).to_string()))
}

/// A `phxbinlogsvr` process, killed on drop.
struct Svr {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Svr {
    fn start(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Svr {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

async fn status(admin: u16) -> Option<serde_json::Value> {
    let get = async {
        let mut s = TcpStream::connect(("127.0.0.1", admin)).await.ok()?;
        s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
}

async fn role(admin: u16) -> Option<String> {
    status(admin).await?["agent"]["role"]
        .as_str()
        .map(str::to_string)
}

/// The node whose agent reports `master` while the others report `replica`.
async fn wait_master(admins: &[u16], up: &[usize], timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut masters = Vec::new();
        let mut replicas = 0;
        for &i in up {
            match role(admins[i]).await.as_deref() {
                Some("master") => masters.push(i),
                Some("replica") => replicas += 1,
                _ => {}
            }
        }
        if let [m] = masters[..]
            && replicas + 1 == up.len()
        {
            return Ok(m);
        }
        if Instant::now() > deadline {
            bail!("no single master among {up:?} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One acknowledged insert as the application account, or the error.
async fn insert(db: &MariaDb, id: u64) -> Result<()> {
    let opts =
        testkit::mysql_async::OptsBuilder::from_opts(db.opts_for(APP_USER, Some(APP_PASSWORD)));
    let mut c = tokio::time::timeout(
        Duration::from_millis(500),
        testkit::mysql_async::Conn::new(opts),
    )
    .await
    .context("connect timeout")??;
    c.query_drop(format!("INSERT INTO test.acked VALUES ({id})"))
        .await?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match &args.phxbinlogsvr {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("phxbinlogsvr"))
            .context("no directory for phxbinlogsvr")?,
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p phxbinlogsvr --bins --examples`",
            bin.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = if args.keep_logs {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    let dbs: Vec<Arc<MariaDb>> = {
        let (a, b, c) = tokio::join!(
            MariaDb::builder()
                .name("fo-n1")
                .replica_mode(true)
                .option("read_only", "ON")
                .arg("--skip-slave-start")
                .start(),
            MariaDb::builder()
                .name("fo-n2")
                .replica_mode(true)
                .option("read_only", "ON")
                .arg("--skip-slave-start")
                .start(),
            MariaDb::builder()
                .name("fo-n3")
                .replica_mode(true)
                .option("read_only", "ON")
                .arg("--skip-slave-start")
                .start(),
        );
        vec![Arc::new(a?), Arc::new(b?), Arc::new(c?)]
    };
    for db in &dbs {
        db.exec(&format!(
            "SET sql_log_bin=0; CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'; \
             GRANT ALL ON *.* TO '{ADMIN_USER}'@'%'"
        ))
        .await?;
    }
    let pv = free_ports(9);
    let mut y = format!(
        "version: 1\ncluster_id: 4343\nname: failover\nlease: {{duration: {}}}\ncredentials:\n\
         \x20 replication: {{user: {REPL_USER}, password: \"{REPL_PASSWORD}\"}}\n\
         \x20 mariadb_admin: {{user: {ADMIN_USER}, password: \"{ADMIN_PASSWORD}\"}}\n\
         \x20 admin_api: {{token: \"{ADMIN_TOKEN}\"}}\nnodes:\n",
        args.lease
    );
    let admins: Vec<u16> = (0..3).map(|i| pv[i * 3 + 2]).collect();
    for (i, db) in dbs.iter().enumerate() {
        let extra = free_ports(3);
        y += &format!(
            "  - {{name: node{n}, id: {n}, host: 127.0.0.1, paxos_port: {}, binlog_port: {}, admin_port: {}, \
             proxy_rw_port: {}, proxy_ro_port: {}, proxy_admin_port: {}, mariadb_port: {}, data_dir: {}}}\n",
            pv[i * 3],
            pv[i * 3 + 1],
            pv[i * 3 + 2],
            extra[0],
            extra[1],
            extra[2],
            db.port(),
            dir.join(format!("node{}", i + 1)).display(),
            n = i + 1
        );
    }
    let cfg = dir.join("cluster.yaml");
    fs::write(&cfg, y)?;
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600))?;
    let mut svrs: Vec<Svr> = (1..=3)
        .map(|n| Svr {
            bin: bin.clone(),
            args: vec![
                "--config".into(),
                cfg.display().to_string(),
                "--node".into(),
                format!("node{n}"),
                "--agent".into(),
                "--without-proxy".into(),
            ],
            log: dir.join(format!("node{n}.log")),
            child: None,
        })
        .collect();
    for s in &mut svrs {
        s.start()?;
    }
    let all = [0usize, 1, 2];
    let mut m = wait_master(&admins, &all, Duration::from_secs(60)).await?;
    dbs[m]
        .exec("CREATE TABLE test.acked (id BIGINT PRIMARY KEY)")
        .await?;
    println!(
        "3 nodes up, node{} master; lease {}; {} runs; logs in {}",
        m + 1,
        args.lease,
        args.runs,
        dir.display()
    );

    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut next_id = 1u64;
    let mut times = Vec::new();
    for run in 1..=args.runs {
        // A client writing to the master until it dies.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (db, acked, stop) = (Arc::clone(&dbs[m]), Arc::clone(&acked), Arc::clone(&stop));
            let start = next_id;
            tokio::spawn(async move {
                let mut id = start;
                while !stop.load(Ordering::Relaxed) {
                    if insert(&db, id).await.is_ok() {
                        acked.lock().unwrap().push(id);
                    }
                    id += 1;
                }
                id
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        // kill -9 the master node: its MariaDB and its binlog server.
        let t0 = Instant::now();
        dbs[m].kill9().await?;
        svrs[m].kill();
        stop.store(true, Ordering::Relaxed);
        next_id = writer.await? + 1_000;
        let up: Vec<usize> = all.into_iter().filter(|&i| i != m).collect();
        // The first acknowledged write on a surviving node.
        let (new_master, elapsed) = 'probe: loop {
            for &i in &up {
                if insert(&dbs[i], next_id).await.is_ok() {
                    acked.lock().unwrap().push(next_id);
                    next_id += 1;
                    break 'probe (i, t0.elapsed());
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("run {run}: no write acknowledged within 60 s of the kill");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        times.push(elapsed.as_secs_f64());
        println!(
            "run {run:>2}: node{} killed, node{} took the first write after {:>5} ms",
            m + 1,
            new_master + 1,
            elapsed.as_millis()
        );
        // The old node comes back as a replica.
        dbs[m].start_again().await?;
        svrs[m].start()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match role(admins[m]).await.as_deref() {
                Some("replica") => break,
                Some(r @ ("diverged" | "blocked")) if Instant::now() > deadline => {
                    let s = status(admins[m]).await.unwrap_or_default();
                    bail!(
                        "node{} did not rejoin: {r}: {}",
                        m + 1,
                        s["agent"]["detail"]
                    );
                }
                _ if Instant::now() > deadline => bail!("node{} did not rejoin", m + 1),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        m = wait_master(&admins, &all, Duration::from_secs(30)).await?;
        let pos = dbs[m].gtid_binlog_pos().await?;
        for &i in all.iter().filter(|&&i| i != m) {
            dbs[i].wait_for_gtid(&pos, Duration::from_secs(60)).await?;
        }
    }
    let switchover_downtimes = switchovers(&args, &dbs, &admins, &acked, &mut next_id, m).await?;
    // Every acknowledged write on every node.
    let acked = acked.lock().unwrap().clone();
    for (i, db) in dbs.iter().enumerate() {
        let ids: Vec<u64> = db.query_rows("SELECT id FROM test.acked").await?;
        let have: std::collections::HashSet<u64> = ids.into_iter().collect();
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|id| !have.contains(id))
            .collect();
        if !missing.is_empty() {
            bail!("node{} lacks acknowledged writes {missing:?}", i + 1);
        }
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let med = median(&mut times);
    println!(
        "failover (kill -9 of the master node -> first write acknowledged by the new master), \
         {} runs, lease {}: median {:.2} s, max {:.2} s; {} acknowledged writes, all on every node",
        args.runs,
        args.lease,
        med,
        max,
        acked.len()
    );
    if let Some((med, max)) = switchover_downtimes {
        println!(
            "switchover write downtime, {} switchovers: median {:.0} ms, max {:.0} ms",
            args.switchovers, med, max
        );
    }
    Ok(())
}

/// Moves the master around every ordered pair (`args.switchovers` times)
/// under a writing client; (median, max) write downtime in ms.
async fn switchovers(
    args: &Args,
    dbs: &[Arc<MariaDb>],
    admins: &[u16],
    acked: &Arc<Mutex<Vec<u64>>>,
    next_id: &mut u64,
    first: usize,
) -> Result<Option<(f64, f64)>> {
    if args.switchovers == 0 {
        return Ok(None);
    }
    let all = [0usize, 1, 2];
    let stop = Arc::new(AtomicBool::new(false));
    // When each write was acknowledged.
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let writer = {
        let (dbs, acked, times, stop) = (
            dbs.to_vec(),
            Arc::clone(acked),
            Arc::clone(&times),
            Arc::clone(&stop),
        );
        let (mut id, mut at) = (*next_id, first);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut done = false;
                for j in 0..dbs.len() {
                    let i = (at + j) % dbs.len();
                    if insert(&dbs[i], id).await.is_ok() {
                        acked.lock().unwrap().push(id);
                        times.lock().unwrap().push(Instant::now());
                        at = i;
                        done = true;
                        break;
                    }
                }
                id += 1;
                if !done {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            id
        })
    };
    let writes = || times.lock().unwrap().len();
    let flowing = async |n: usize| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while writes() < n + 5 {
            if Instant::now() > deadline {
                bail!("writes do not flow");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    };
    let mut master = first;
    let mut downtimes = Vec::new();
    for k in 0..args.switchovers {
        let to = (master + if (k / 3) % 2 == 0 { 1 } else { 2 }) % 3;
        flowing(writes()).await?;
        let t0 = Instant::now();
        let target = format!("node{}", to + 1);
        let (mut code, mut body) = switchover(admins[master], &target).await?;
        if code == 503 {
            // Not drained in time (the documented answer: try again). The
            // downtime counts from the first attempt: a client saw it all.
            println!(
                "switchover {:>2}: refused once ({body}); trying again",
                k + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            (code, body) = switchover(admins[master], &target).await?;
        }
        if code != 200 {
            bail!(
                "switchover node{} -> node{}: {code} {body}",
                master + 1,
                to + 1
            );
        }
        // The answer comes once the lease is handed over; the target then
        // promotes its MariaDB.
        let deadline = Instant::now() + Duration::from_secs(30);
        while role(admins[to]).await.as_deref() != Some("master") {
            if Instant::now() > deadline {
                bail!("switchover to node{}: not promoted within 30 s", to + 1);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if wait_master(admins, &all, Duration::from_secs(30)).await? != to {
            bail!("switchover to node{} did not take", to + 1);
        }
        let n = writes();
        flowing(n).await?;
        let t = times.lock().unwrap().clone();
        let gap = t
            .windows(2)
            .filter(|w| w[1] > t0)
            .map(|w| w[1].duration_since(w[0].max(t0)))
            .max()
            .unwrap_or_default();
        println!(
            "switchover {:>2}: node{} -> node{}, write downtime {:>4} ms",
            k + 1,
            master + 1,
            to + 1,
            gap.as_millis()
        );
        downtimes.push(gap.as_secs_f64() * 1000.0);
        master = to;
    }
    stop.store(true, Ordering::Relaxed);
    *next_id = writer.await? + 1;
    let pos = dbs[master].gtid_binlog_pos().await?;
    for &i in all.iter().filter(|&&i| i != master) {
        dbs[i].wait_for_gtid(&pos, Duration::from_secs(60)).await?;
    }
    let max = downtimes.iter().copied().fold(0.0, f64::max);
    Ok(Some((median(&mut downtimes), max)))
}
