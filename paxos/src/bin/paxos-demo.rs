//! `paxos-demo`: a 3-node Multi-Paxos cluster in one process, on loopback TCP
//! with real files, walked through a failover.
//!
//! It starts three nodes, waits for a master lease, writes through the master,
//! stops the master, times the election of a new one, writes again, restarts the
//! old master and waits until it has caught up, then checks that all three
//! replicas applied the same sequence. With `--hold` it keeps the cluster up and
//! prints its status until Ctrl-C.
//!
//! ```text
//! cargo run --release -p paxos --bin paxos-demo
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use paxos::runtime::{ApplyError, CheckpointChunk, Node, NodeConfig, NodeHandle, StateMachine};
use paxos::{InstanceId, Membership, NodeId, SystemState};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "A 3-node Multi-Paxos cluster on this machine, walked through a failover")]
struct Args {
    /// Where the nodes keep their logs (default: a fresh temporary directory,
    /// removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Master lease length in milliseconds.
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// Seconds of writes in each phase.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Concurrent writers on the master.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Keep the cluster running after the walk-through and print its status.
    #[arg(long)]
    hold: bool,
}

/// The replicated state: a running hash of every applied value. It lives in
/// memory, shared across a node's restart, standing in for an application's
/// durable state.
#[derive(Default)]
struct Replica {
    next: InstanceId,
    items: u64,
    hash: u64,
    receiving: Vec<u8>,
}

#[derive(Clone, Default)]
struct DemoSm(Arc<Mutex<Replica>>);

impl DemoSm {
    fn snapshot(&self) -> (InstanceId, u64, u64) {
        let r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (r.next, r.items, r.hash)
    }
}

impl StateMachine for DemoSm {
    type Output = ();

    fn apply(&mut self, instance: InstanceId, items: Vec<Vec<u8>>) -> Result<Vec<()>, ApplyError> {
        let mut r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut h = DefaultHasher::new();
        (r.hash, instance, &items).hash(&mut h);
        r.hash = h.finish();
        r.items += items.len() as u64;
        r.next = instance + 1;
        Ok(vec![(); items.len()])
    }

    fn checkpoint(&self) -> InstanceId {
        self.snapshot().0
    }

    fn read_checkpoint(&mut self, offset: u64, _max: usize) -> std::io::Result<CheckpointChunk> {
        let (next, items, hash) = self.snapshot();
        let mut image = Vec::with_capacity(24);
        for v in [next, items, hash] {
            image.extend_from_slice(&v.to_le_bytes());
        }
        let start = (offset as usize).min(image.len());
        Ok(CheckpointChunk {
            checkpoint: next,
            data: image[start..].to_vec(),
            done: true,
        })
    }

    fn write_checkpoint(
        &mut self,
        checkpoint: InstanceId,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if offset == 0 {
            r.receiving.clear();
        }
        r.receiving.extend_from_slice(data);
        if done {
            let word = |i: usize| -> std::io::Result<u64> {
                let bytes = r
                    .receiving
                    .get(i * 8..i * 8 + 8)
                    .ok_or_else(|| std::io::Error::other("short checkpoint image"))?;
                let mut b = [0u8; 8];
                b.copy_from_slice(bytes);
                Ok(u64::from_le_bytes(b))
            };
            let (items, hash) = (word(1)?, word(2)?);
            r.next = checkpoint;
            r.items = items;
            r.hash = hash;
        }
        Ok(())
    }
}

struct Cluster {
    dir: PathBuf,
    addrs: BTreeMap<NodeId, SocketAddr>,
    lease: Duration,
    sms: BTreeMap<NodeId, DemoSm>,
    nodes: BTreeMap<NodeId, NodeHandle<()>>,
}

impl Cluster {
    async fn start_node(&mut self, id: NodeId) -> Result<()> {
        let addr = self.addrs[&id];
        let mut cfg = NodeConfig::new(id, 0xDE30, addr, self.dir.join(format!("node{id}")));
        cfg.core.lease_duration = self.lease;
        cfg.initial = Some(SystemState {
            membership: Membership::new(self.addrs.iter().map(|(id, a)| (*id, a.to_string()))),
            lease: Default::default(),
        });
        let sm = self.sms.entry(id).or_default().clone();
        let handle = Node::start(cfg, sm)
            .await
            .with_context(|| format!("starting node {id}"))?;
        self.nodes.insert(id, handle);
        Ok(())
    }

    async fn wait_for_master(&self, deadline: Duration) -> Result<(NodeId, NodeHandle<()>)> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            for (id, h) in &self.nodes {
                if h.is_master() {
                    return Ok((*id, h.clone()));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("no master after {deadline:?}")
    }

    async fn print_status(&self) {
        println!("  node  role      lease master  chosen  applied  items  state hash");
        for (id, sm) in &self.sms {
            let (next, items, hash) = sm.snapshot();
            let (role, master, chosen) = match self.nodes.get(id) {
                Some(h) => match h.status().await {
                    Ok(st) => (
                        if h.is_master() { "master" } else { "replica" },
                        st.lease_master.map_or("-".into(), |m| m.to_string()),
                        st.chosen_prefix.to_string(),
                    ),
                    Err(_) => ("stopped", "-".into(), "-".into()),
                },
                None => ("stopped", "-".into(), "-".into()),
            };
            println!(
                "  {id:<5} {role:<9} {master:<13} {chosen:<7} {next:<8} {items:<6} {hash:016x}"
            );
        }
    }
}

/// Closed-loop writers on `master` for `secs`; returns values chosen.
async fn write_load(master: &NodeHandle<()>, writers: usize, secs: u64) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (h, done) = (master.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                if h.propose(format!("writer {w} value {n}").into_bytes())
                    .await
                    .is_err()
                {
                    break; // lost the lease, or stopped
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed)
}

fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temporary directory")?),
    };
    let dir = match (&args.dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("one of them is set"),
    };
    let mut addrs = BTreeMap::new();
    for id in 1..=3 {
        addrs.insert(id, free_addr()?);
    }
    println!("Starting 3 nodes in {}:", dir.display());
    for (id, a) in &addrs {
        println!("  node {id} on {a}");
    }
    let mut cluster = Cluster {
        dir,
        addrs,
        lease: Duration::from_millis(args.lease_ms),
        sms: BTreeMap::new(),
        nodes: BTreeMap::new(),
    };
    let t0 = Instant::now();
    for id in 1..=3 {
        cluster.start_node(id).await?;
    }
    let wait = cluster.lease * 10;
    let (master, handle) = cluster.wait_for_master(wait).await?;
    println!(
        "\nNode {master} holds the master lease ({} ms after start; a fresh cluster first waits out one lease).",
        t0.elapsed().as_millis()
    );

    let n = write_load(&handle, args.writers, args.seconds).await;
    println!(
        "Wrote {n} values through node {master} with {} writers in {} s: {} values/s.\n",
        args.writers,
        args.seconds,
        n / args.seconds.max(1)
    );
    cluster.print_status().await;

    println!("\nStopping the master, node {master} ...");
    let stopped_at = Instant::now();
    if let Some(h) = cluster.nodes.remove(&master) {
        h.shutdown().await;
    }
    let (new_master, new_handle) = cluster.wait_for_master(wait).await?;
    println!(
        "Node {new_master} took over the lease {} ms later (the others wait out the old lease, {} ms).",
        stopped_at.elapsed().as_millis(),
        args.lease_ms
    );
    let n = write_load(&new_handle, args.writers, args.seconds).await;
    println!("Wrote {n} more values through node {new_master}.\n");
    cluster.print_status().await;

    println!("\nRestarting node {master}; it replays its log and catches up from the others ...");
    cluster.start_node(master).await?;
    let target = cluster.sms[&new_master].snapshot().0;
    let start = Instant::now();
    while cluster.sms[&master].snapshot().0 < target {
        if start.elapsed() > wait {
            bail!("node {master} did not catch up within {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the lease renewals settle so every replica is at the same instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.print_status().await;
    let hashes: Vec<(InstanceId, u64)> = cluster
        .sms
        .values()
        .map(|sm| {
            let (next, _, hash) = sm.snapshot();
            (next, hash)
        })
        .collect();
    let agree = hashes.windows(2).all(|w| w[0] == w[1]);
    println!(
        "\n{}",
        if agree {
            "All three replicas applied the same sequence (same instance, same state hash)."
        } else {
            "Replicas are at different instances right now (new values keep arriving); compare the hashes at equal instances."
        }
    );

    if args.hold {
        println!("\nHolding the cluster; status every 2 s, Ctrl-C to stop.");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    println!();
                    cluster.print_status().await;
                }
            }
        }
    }
    for (_, h) in std::mem::take(&mut cluster.nodes) {
        h.shutdown().await;
    }
    Ok(())
}
