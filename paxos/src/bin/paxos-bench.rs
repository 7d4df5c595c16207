//! `paxos-bench`: throughput and latency of a 3-node cluster in one process.
//!
//! Three nodes are started with the real runtime ([`Node::start`]), talking
//! real TCP over 127.0.0.1, each with its own segment log (real files, real
//! `fdatasync`) under a fresh directory that is removed at the end. Their state
//! machine only counts what it applies (its checkpoint is the next instance,
//! kept in memory). Once a master holds the lease, a closed-loop workload runs
//! on it for every cell of value size x concurrency: N tokio tasks each call
//! `propose(value).await` in a loop for `--seconds`, timing every call. A cell
//! reports chosen values/s, MB/s (of values, 10^6 bytes) and the mean, p50,
//! p99 and max latency of `propose` (queued, chosen, applied on the master, answered).
//! A second table shows what the master's driver did per second (fsyncs,
//! instances, items per instance), from the runtime's counters.
//!
//! One cluster serves every cell: each cell is preceded by `--warmup` seconds
//! of the same workload (not counted), and after each cell the bench waits
//! until every node has applied everything the master applied, so no cell
//! inherits a backlog.
//!
//! Latencies are kept in a plain `Vec` and sorted at the end of the cell: at
//! these rates that is a few MB per cell, the percentiles are exact and there
//! is no dependency to add.
//!
//! The figures are only comparable with the machine's: the bench prints the
//! core count, the CPU and the p50 of one 4 KiB append + `fdatasync` on the disk
//! the logs live on (every chosen value costs at least two of those in a row:
//! the master's own before it sends Accept, then a follower's before it answers).
//!
//! # Settings
//!
//! The library's defaults ([`NodeConfig::new`], `CoreConfig::new`: batches of
//! up to 1024 items / 4 MiB per instance with no added delay, 64 instances in
//! flight, a 3 s lease), with one exception:
//!
//! - **tick 1 ms instead of 5 ms** (`--tick-ms`). In the current core a
//!   proposal that reaches the leader when nothing else is happening waits for
//!   the next tick: `Core::propose` only queues it, and the driver calls
//!   `Core::take_ready` (whose `flush_queue` places queued items in an
//!   instance) only while `Core::has_ready()`, which a non-empty queue does not
//!   make true. With 5 ms ticks a lone proposer then takes ~5 ms per value, and
//!   under load the pipeline keeps falling back to one batch per tick (100 B x
//!   128 proposers measured anywhere from 20,000 to 69,000 values/s from one
//!   run to the next). 1 ms ticks shorten that wait and make the figures
//!   repeatable (1 ms: 100 B x 1 at ~1.6 ms p50, 100 B x 128 at ~100,000-116,000
//!   values/s), for more CPU while idle (printed; measured 4.5-4.8% of one core
//!   for the 3 nodes, against 2.5% at 5 ms). Return to the default once the
//!   core places proposals as they arrive.
//!
//! Each tunable can be changed with a flag (`--max-batch-items`,
//! `--max-batch-bytes`, `--max-batch-delay-us`, `--max-inflight`, `--tick-ms`,
//! `--lease-ms`); the output prints the settings used.
//!
//! ```text
//! cargo run --release -p paxos --bin paxos-bench -- --seconds 5 --sizes 100,16KiB --concurrency 1,16,128
//! ```

use clap::Parser;
use paxos::runtime::{ApplyError, CheckpointChunk, Node, NodeConfig, NodeHandle, StateMachine};
use paxos::{InstanceId, Membership, NodeId, SystemState};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, IsTerminal, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLUSTER_ID: u64 = 0xBE7C;
const NODES: usize = 3;
/// How long to wait for a master, and for followers to catch up after a cell.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Throughput and latency of a 3-node Multi-Paxos cluster in one process")]
struct Args {
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Unmeasured seconds of the same workload before each cell.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Value sizes, comma-separated (bytes; K/KiB and M/MiB suffixes allowed).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "100,16KiB")]
    sizes: Vec<usize>,
    /// Concurrent proposers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    concurrency: Vec<usize>,
    /// Where the nodes' data goes (a fresh subdirectory, removed at the end).
    /// Default: the system's temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Override CoreConfig::max_batch_items.
    #[arg(long)]
    max_batch_items: Option<usize>,
    /// Override CoreConfig::max_batch_bytes.
    #[arg(long)]
    max_batch_bytes: Option<usize>,
    /// Override CoreConfig::max_batch_delay (microseconds).
    #[arg(long)]
    max_batch_delay_us: Option<u64>,
    /// Override CoreConfig::max_inflight.
    #[arg(long)]
    max_inflight: Option<usize>,
    /// NodeConfig::tick_interval in milliseconds (the library's default is 5;
    /// see the doc comment for why the bench uses 1).
    #[arg(long, default_value_t = 1)]
    tick_ms: u64,
    /// Override CoreConfig::lease_duration (milliseconds).
    #[arg(long)]
    lease_ms: Option<u64>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        other => return Err(format!("bad size unit {other:?} in {s:?}")),
    };
    Ok(n * mult)
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    if args.sizes.is_empty() || args.concurrency.is_empty() || args.concurrency.contains(&0) {
        eprintln!("--sizes and --concurrency need at least one value, concurrency > 0");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let data = match DataDir::create(&base) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "cannot create a data directory under {}: {e}",
                base.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&args, &data.0));
    drop(runtime);
    drop(data);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paxos-bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A fresh directory, removed (with everything in it) on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn create(base: &Path) -> io::Result<DataDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("paxos-bench-{}-{nanos:09}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(DataDir(dir))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

async fn run(args: &Args, dir: &Path) -> Result<(), BoxError> {
    let fsync = measure_fsync(dir)?;
    let mut context = String::new();
    writeln!(context, "## Machine")?;
    writeln!(context)?;
    writeln!(
        context,
        "- cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    if let Some(cpu) = cpu_model() {
        writeln!(context, "- cpu: {cpu}")?;
    }
    writeln!(context, "- data dir: {}", dir.display())?;
    writeln!(
        context,
        "- 4 KiB append + fdatasync on that disk (200 tries): p50 {}, p90 {}, max {}",
        fmt_dur(fsync.p50),
        fmt_dur(fsync.p90),
        fmt_dur(fsync.max)
    )?;
    print!("{context}");
    io::stdout().flush()?;

    let (cluster, settings) = start_cluster(args, dir).await?;
    // What the idle cluster costs (timers, lease renewals, commit heartbeats).
    let idle_before = thread_cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some((b, a)) = idle_before.zip(thread_cpu()) {
        let used = a.values().sum::<u64>().saturating_sub(b.values().sum());
        println!(
            "- CPU used by the idle cluster: {:.1}% of one core",
            used as f64 / 1e7
        );
    }
    let result = run_cells(args, &cluster, &settings).await;
    for node in cluster.nodes {
        node.handle.shutdown().await;
    }
    result
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// What a bench state machine has applied (shared with the bench).
#[derive(Default)]
struct Applied {
    instances: AtomicU64,
    items: AtomicU64,
    bytes: AtomicU64,
}

/// Counts; its checkpoint is the next instance, in memory only.
struct CountingSm {
    next: InstanceId,
    applied: Arc<Applied>,
}

impl StateMachine for CountingSm {
    type Output = ();

    fn apply(&mut self, instance: InstanceId, items: Vec<Vec<u8>>) -> Result<Vec<()>, ApplyError> {
        self.next = instance + 1;
        let bytes: usize = items.iter().map(Vec::len).sum();
        self.applied.instances.fetch_add(1, Ordering::Relaxed);
        self.applied
            .items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        self.applied
            .bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(vec![(); items.len()])
    }

    fn checkpoint(&self) -> InstanceId {
        self.next
    }

    fn read_checkpoint(&mut self, _offset: u64, _max: usize) -> io::Result<CheckpointChunk> {
        Ok(CheckpointChunk {
            checkpoint: self.next,
            data: Vec::new(),
            done: true,
        })
    }

    fn write_checkpoint(
        &mut self,
        checkpoint: InstanceId,
        _offset: u64,
        _data: &[u8],
        done: bool,
    ) -> io::Result<()> {
        if done {
            self.next = checkpoint;
        }
        Ok(())
    }
}

struct BenchNode {
    handle: NodeHandle<()>,
    applied: Arc<Applied>,
}

struct Cluster {
    nodes: Vec<BenchNode>,
    master: usize,
}

fn free_addrs(n: usize) -> io::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(TcpListener::local_addr).collect()
}

fn node_config(args: &Args, id: NodeId, addr: SocketAddr, dir: &Path) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, CLUSTER_ID, addr, dir.join(format!("node{id}")));
    let core = &mut cfg.core;
    if let Some(v) = args.max_batch_items {
        core.max_batch_items = v;
    }
    if let Some(v) = args.max_batch_bytes {
        core.max_batch_bytes = v;
    }
    if let Some(v) = args.max_batch_delay_us {
        core.max_batch_delay = Duration::from_micros(v);
    }
    if let Some(v) = args.max_inflight {
        core.max_inflight = v;
    }
    if let Some(v) = args.lease_ms {
        core.lease_duration = Duration::from_millis(v);
    }
    cfg.tick_interval = Duration::from_millis(args.tick_ms.max(1));
    cfg
}

fn describe(cfg: &NodeConfig) -> String {
    let c = &cfg.core;
    format!(
        "max_batch_items={} max_batch_bytes={} max_batch_delay={:?} max_inflight={} \
         tick={:?} lease={:?}",
        c.max_batch_items,
        c.max_batch_bytes,
        c.max_batch_delay,
        c.max_inflight,
        cfg.tick_interval,
        c.lease_duration
    )
}

async fn start_cluster(args: &Args, dir: &Path) -> Result<(Cluster, String), BoxError> {
    let addrs = free_addrs(NODES)?;
    let initial = SystemState {
        membership: Membership::new(
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (i as NodeId + 1, a.to_string())),
        ),
        ..SystemState::default()
    };
    let mut nodes = Vec::new();
    let mut settings = String::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut cfg = node_config(args, i as NodeId + 1, *addr, dir);
        cfg.initial = Some(initial.clone());
        settings = describe(&cfg);
        let applied = Arc::new(Applied::default());
        let sm = CountingSm {
            next: 0,
            applied: Arc::clone(&applied),
        };
        let handle = Node::start(cfg, sm).await?;
        nodes.push(BenchNode { handle, applied });
    }
    eprintln!("started {NODES} nodes on {addrs:?}; waiting for a master");
    let started = Instant::now();
    let master = loop {
        if let Some(m) = nodes.iter().position(|n| n.handle.is_master()) {
            break m;
        }
        if let Some(e) = nodes.iter().find_map(|n| n.handle.fatal_error()) {
            return Err(format!("a node stopped: {e}").into());
        }
        if started.elapsed() > WAIT {
            return Err("no master within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "node {} is master after {:.2} s",
        master + 1,
        started.elapsed().as_secs_f64()
    );
    Ok((Cluster { nodes, master }, settings))
}

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

/// What one closed-loop run measured.
struct Run {
    elapsed: Duration,
    /// Latency of every successful `propose`, in nanoseconds.
    latencies: Vec<u64>,
    failures: u64,
    first_error: Option<String>,
}

/// `concurrency` tasks, each proposing `size`-byte values one after another for
/// `duration`; every call started before the deadline is waited for.
async fn closed_loop(
    handle: &NodeHandle<()>,
    size: usize,
    concurrency: usize,
    duration: Duration,
) -> Run {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut value = vec![0u8; size];
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let mut first_error = None;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                // Distinct values (not that the library cares).
                let tag = (task as u64) << 40 | seq;
                let n = value.len().min(8);
                value[..n].copy_from_slice(&tag.to_le_bytes()[..n]);
                seq += 1;
                let t = Instant::now();
                match handle.propose(value.clone()).await {
                    Ok(_) => latencies.push(t.elapsed().as_nanos() as u64),
                    Err(e) => {
                        failures += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        // A failure is usually a lost lease: don't spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (latencies, failures, first_error)
        }));
    }
    let mut run = Run {
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        failures: 0,
        first_error: None,
    };
    for t in tasks {
        match t.await {
            Ok((lat, failures, err)) => {
                run.latencies.extend(lat);
                run.failures += failures;
                if run.first_error.is_none() {
                    run.first_error = err;
                }
            }
            Err(e) => {
                run.failures += 1;
                run.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    run.elapsed = start.elapsed();
    run
}

/// Waits until every node has applied as many instances as the master.
async fn drain(cluster: &Cluster) -> Result<(), BoxError> {
    let started = Instant::now();
    let target = cluster.nodes[cluster.master]
        .applied
        .instances
        .load(Ordering::Relaxed);
    loop {
        let behind = cluster
            .nodes
            .iter()
            .any(|n| n.applied.instances.load(Ordering::Relaxed) < target);
        if !behind {
            return Ok(());
        }
        if let Some(e) = cluster.nodes.iter().find_map(|n| n.handle.fatal_error()) {
            return Err(format!("a node stopped: {e}").into());
        }
        if started.elapsed() > WAIT {
            return Err("followers did not catch up within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Cell {
    size: usize,
    concurrency: usize,
    run: Run,
    /// Deltas of the master's counters over the measured run.
    syncs: u64,
    instances: u64,
    items: u64,
    msgs_sent: u64,
    readies: u64,
    /// fsyncs of one follower over the measured run.
    follower_syncs: u64,
    /// CPU time (ns) of the whole process and of the master's driver thread.
    cpu: Option<(u64, u64)>,
}

async fn run_cells(args: &Args, cluster: &Cluster, settings: &str) -> Result<(), BoxError> {
    let master = &cluster.nodes[cluster.master].handle;
    let follower = &cluster.nodes[(cluster.master + 1) % NODES].handle;
    let measure = Duration::from_secs_f64(args.seconds.max(0.1));
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let total = args.sizes.len() * args.concurrency.len();
    let mut cells = Vec::new();
    for &size in &args.sizes {
        for &concurrency in &args.concurrency {
            let n = cells.len() + 1;
            let label = format!("[{n}/{total}] {} x {concurrency}", fmt_size(size));
            if !warmup.is_zero() {
                eprintln!("{label}: warming up {:.1} s", warmup.as_secs_f64());
                closed_loop(master, size, concurrency, warmup).await;
                drain(cluster).await?;
            }
            if !master.is_master() {
                eprintln!(
                    "{label}: warning: node {} no longer holds the lease",
                    cluster.master + 1
                );
            }
            eprintln!("{label}: measuring {:.1} s", measure.as_secs_f64());
            let before = master.counters();
            let before_f = follower.counters();
            let cpu_before = thread_cpu();
            let run = closed_loop(master, size, concurrency, measure).await;
            let cpu_after = thread_cpu();
            let after = master.counters();
            let after_f = follower.counters();
            let driver = format!("paxos-{}", cluster.master + 1);
            let cpu = cpu_before.zip(cpu_after).map(|(b, a)| {
                let total = |m: &HashMap<String, u64>| m.values().sum::<u64>();
                let of = |m: &HashMap<String, u64>| m.get(&driver).copied().unwrap_or(0);
                (
                    total(&a).saturating_sub(total(&b)),
                    of(&a).saturating_sub(of(&b)),
                )
            });
            drain(cluster).await?;
            let cell = Cell {
                size,
                concurrency,
                syncs: after.runtime.log_syncs - before.runtime.log_syncs,
                instances: after.runtime.instances_applied - before.runtime.instances_applied,
                items: after.runtime.items_applied - before.runtime.items_applied,
                msgs_sent: after.runtime.messages_sent - before.runtime.messages_sent,
                readies: after.runtime.readies - before.runtime.readies,
                follower_syncs: after_f.runtime.log_syncs - before_f.runtime.log_syncs,
                cpu,
                run,
            };
            let secs = cell.run.elapsed.as_secs_f64();
            eprintln!(
                "{label}: {:.0} values/s, p50 {}{}",
                cell.run.latencies.len() as f64 / secs,
                fmt_dur(percentile(&mut cell.run.latencies.clone(), 0.50)),
                match &cell.run.first_error {
                    Some(e) => format!(", {} failed (first: {e})", cell.run.failures),
                    None => String::new(),
                }
            );
            cells.push(cell);
        }
    }
    print_tables(args, settings, &mut cells)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn print_tables(args: &Args, settings: &str, cells: &mut [Cell]) -> io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "## Results ({NODES} nodes, 127.0.0.1 TCP, fdatasync'd logs; {:.1} s per cell after {:.1} s warm-up)",
        args.seconds, args.warmup
    )?;
    writeln!(out)?;
    writeln!(out, "Settings: {settings}")?;
    writeln!(out)?;
    writeln!(
        out,
        "| value size | proposers | values/s | MB/s | mean | p50 | p99 | max | failed |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for c in cells.iter_mut() {
        let secs = c.run.elapsed.as_secs_f64();
        let n = c.run.latencies.len();
        let lat = &mut c.run.latencies;
        lat.sort_unstable();
        let mean = lat.iter().sum::<u64>() / (n.max(1) as u64);
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {} | {} | {} | {} | {} |",
            fmt_size(c.size),
            c.concurrency,
            n as f64 / secs,
            (n * c.size) as f64 / secs / 1e6,
            fmt_dur(mean),
            fmt_dur(percentile(lat, 0.50)),
            fmt_dur(percentile(lat, 0.99)),
            fmt_dur(lat.last().copied().unwrap_or(0)),
            c.run.failures
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "### What the master's driver did (per second of the cell)"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| value size | proposers | fsyncs/s (master) | fsyncs/s (a follower) | instances/s | items/instance | Readies/s | msgs sent/s | CPU, cores used (of {cores}) | master driver thread busy |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for c in cells.iter() {
        let secs = c.run.elapsed.as_secs_f64();
        let (cpu, driver) = match c.cpu {
            Some((all, driver)) => (
                format!("{:.2}", all as f64 / 1e9 / secs),
                format!("{:.0}%", driver as f64 / 1e7 / secs),
            ),
            None => ("n/a".to_string(), "n/a".to_string()),
        };
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {cpu} | {driver} |",
            fmt_size(c.size),
            c.concurrency,
            c.syncs as f64 / secs,
            c.follower_syncs as f64 / secs,
            c.instances as f64 / secs,
            c.items as f64 / c.instances.max(1) as f64,
            c.readies as f64 / secs,
            c.msgs_sent as f64 / secs,
        )?;
    }
    out.flush()
}

/// The nearest-rank percentile of `v` (sorted here if it is not already).
fn percentile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    if !v.is_sorted() {
        v.sort_unstable();
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn fmt_dur(nanos: u64) -> String {
    let us = nanos as f64 / 1e3;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn fmt_size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

// ---------------------------------------------------------------------------
// Machine context
// ---------------------------------------------------------------------------

struct FsyncLatency {
    p50: u64,
    p90: u64,
    max: u64,
}

/// 200 x (append 4 KiB, fdatasync) to a new file in `dir`: what a log append
/// costs on this disk at the least.
fn measure_fsync(dir: &Path) -> io::Result<FsyncLatency> {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let block = vec![0xA5u8; 4096];
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        times.push(t.elapsed().as_nanos() as u64);
    }
    drop(file);
    fs::remove_file(&path)?;
    times.sort_unstable();
    Ok(FsyncLatency {
        p50: percentile(&mut times, 0.50),
        p90: percentile(&mut times, 0.90),
        max: times.last().copied().unwrap_or(0),
    })
}

/// CPU time (ns) used so far by each of this process's threads, summed by
/// thread name (`paxos-N` is node N's driver), from `/proc/self/task/*/schedstat`
/// (Linux only; `None` elsewhere). Threads that already exited are not counted.
fn thread_cpu() -> Option<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for task in fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let (Ok(name), Ok(stat)) = (
            fs::read_to_string(dir.join("comm")),
            fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue; // the thread exited meanwhile
        };
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        *out.entry(name.trim().to_string()).or_default() += ns;
    }
    Some(out)
}

fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}
