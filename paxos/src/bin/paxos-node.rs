//! `paxos-node`: runs one node of a demo cluster over TCP.
//!
//! Its state machine writes every applied item to `applied.log` in the data
//! directory, one text line per item (`instance<TAB>crc32<TAB>len`) and one per
//! empty instance (`instance<TAB>-<TAB>0`), so the replicas of a cluster can be
//! compared byte for byte. Every `--checkpoint-every` instances it fsyncs that file
//! and records its checkpoint (the next instance, and the file length there) in
//! the `checkpoint` file, written atomically. On start it cuts `applied.log` back
//! to the checkpoint, and the library replays from there.
//!
//! When `--load-per-sec` is set, the node proposes that many small values per
//! second while it is master (several in flight at once), until the file named
//! by `--stop-load-file` exists. `--status-file` gets a `key=value` summary every
//! 100 ms, replaced atomically.
//!
//! ```text
//! paxos-node --id 1 --listen 127.0.0.1:7001 --data-dir /tmp/n1 \
//!     --peer 1=127.0.0.1:7001 --peer 2=127.0.0.1:7002 --peer 3=127.0.0.1:7003
//! ```

use clap::Parser;
use paxos::runtime::{ApplyError, CheckpointChunk, Node, NodeConfig, NodeHandle, StateMachine};
use paxos::{InstanceId, Membership, NodeId, SystemState};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

#[derive(Parser, Debug)]
#[command(about = "Runs one node of a demo Multi-Paxos cluster")]
struct Args {
    /// This node's id.
    #[arg(long)]
    id: NodeId,
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// A founding member as ID=ADDR, this node included (repeat for each). With
    /// --join: a peer to contact first.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(NodeId, SocketAddr)>,
    #[arg(long)]
    data_dir: PathBuf,
    /// Join an existing cluster (install a checkpoint) instead of founding one.
    #[arg(long)]
    join: bool,
    /// While master, propose this many values per second.
    #[arg(long, default_value_t = 0)]
    load_per_sec: u64,
    /// Most proposals in flight at once.
    #[arg(long, default_value_t = 32)]
    load_concurrency: usize,
    /// Stop proposing once this file exists.
    #[arg(long)]
    stop_load_file: Option<PathBuf>,
    /// Write a key=value status here every 100 ms.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Persist the state machine's checkpoint every this many instances.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Chosen instances the log keeps below the checkpoint (default: the core's).
    #[arg(long)]
    keep_instances: Option<u64>,
    /// Master lease length.
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    #[arg(long, default_value_t = 5)]
    tick_ms: u64,
}

fn parse_peer(s: &str) -> Result<(NodeId, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=ADDR, got {s:?}"))?;
    let id = id.parse().map_err(|e| format!("bad node id {id:?}: {e}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok((id, addr))
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "paxos-node failed");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: Args) -> Result<(), BoxError> {
    let sm = DemoSm::open(&args.data_dir, args.checkpoint_every.max(1))?;
    let sm_applied = Arc::clone(&sm.progress);

    let mut cfg = NodeConfig::new(args.id, args.cluster_id, args.listen, args.data_dir.clone());
    cfg.core.lease_duration = Duration::from_millis(args.lease_ms);
    if let Some(keep) = args.keep_instances {
        cfg.core.keep_instances = keep;
    }
    cfg.tick_interval = Duration::from_millis(args.tick_ms.max(1));
    if args.join {
        cfg.seeds = args.peers.iter().copied().collect();
    } else {
        if !args.peers.iter().any(|(id, _)| *id == args.id) {
            return Err("--peer must list every founding member, this node included".into());
        }
        let voters = args.peers.iter().map(|(id, a)| (*id, a.to_string()));
        cfg.initial = Some(SystemState {
            membership: Membership::new(voters),
            ..SystemState::default()
        });
    }

    let handle = Node::start(cfg, sm).await?;
    info!(node = args.id, addr = %handle.local_addr(), "node started");

    let load = Arc::new(LoadStats::default());
    if args.load_per_sec > 0 {
        tokio::spawn(run_load(
            handle.clone(),
            args.load_per_sec,
            args.load_concurrency.max(1),
            args.stop_load_file.clone(),
            Arc::clone(&load),
        ));
    }
    if let Some(path) = args.status_file.clone() {
        tokio::spawn(write_status(
            handle.clone(),
            path,
            sm_applied,
            Arc::clone(&load),
        ));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        stopped = handle.stopped() => {
            return stopped.map_err(|e| format!("node stopped: {e}").into());
        }
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = term.recv() => info!("terminated"),
    }
    handle.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LoadStats {
    ok: AtomicU64,
    failed: AtomicU64,
    stopped: AtomicBool,
}

/// Proposes `per_sec` values per second while this node is master. Values that
/// fall due while not master, or with `concurrency` proposals already in
/// flight, are skipped rather than queued.
async fn run_load(
    handle: NodeHandle<()>,
    per_sec: u64,
    concurrency: usize,
    stop_file: Option<PathBuf>,
    stats: Arc<LoadStats>,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut issued = 0u64;
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        if stop_file.as_deref().is_some_and(Path::exists) {
            if !stats.stopped.swap(true, Ordering::Relaxed) {
                info!("stop file found: load stopped");
            }
            return;
        }
        let due = (start.elapsed().as_secs_f64() * per_sec as f64) as u64;
        if !handle.is_master() {
            issued = due;
            continue;
        }
        while issued < due {
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                issued = due;
                break;
            };
            issued += 1;
            seq += 1;
            let value =
                format!("{}:{seq}:{:016x}", handle.node_id(), rand::random::<u64>()).into_bytes();
            let handle = handle.clone();
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                match handle.propose(value).await {
                    Ok(_) => stats.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        debug!(error = %e, "proposal failed");
                        stats.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                drop(slot);
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Status file
// ---------------------------------------------------------------------------

async fn write_status(
    handle: NodeHandle<()>,
    path: PathBuf,
    sm_applied: Arc<AtomicU64>,
    load: Arc<LoadStats>,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Ok(status) = handle.status().await else {
            return; // node stopped
        };
        let c = handle.counters();
        let master = handle
            .master()
            .map_or_else(|| "-".to_string(), |(id, _)| id.to_string());
        let text = format!(
            "node={}\npid={}\nuptime_ms={}\nis_master={}\nmaster={master}\nlease_master={}\n\
             chosen_prefix={}\napplied={}\nsm_applied={}\nlog_start={}\nbootstrapping={}\n\
             proposals_ok={}\nproposals_failed={}\nload_stopped={}\ncheckpoint_installs={}\n\
             compactions={}\nlease_acquired={}\nundecodable_messages={}\n",
            status.node,
            std::process::id(),
            started.elapsed().as_millis(),
            u8::from(handle.is_master()),
            status
                .lease_master
                .map_or_else(|| "-".to_string(), |id| id.to_string()),
            status.chosen_prefix,
            status.applied,
            sm_applied.load(Ordering::Relaxed),
            status.log_start,
            u8::from(status.bootstrapping),
            load.ok.load(Ordering::Relaxed),
            load.failed.load(Ordering::Relaxed),
            u8::from(load.stopped.load(Ordering::Relaxed)),
            c.runtime.checkpoints_installed,
            c.core.compactions,
            c.core.lease_acquired,
            c.runtime.undecodable_messages,
        );
        // Readers must never see a half-written file; durability does not matter.
        let tmp = path.with_extension("tmp");
        if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &path)) {
            warn!(path = %path.display(), error = %e, "cannot write status file");
        }
    }
}

// ---------------------------------------------------------------------------
// The demo state machine
// ---------------------------------------------------------------------------

const APPLIED_LOG: &str = "applied.log";
const CHECKPOINT_FILE: &str = "checkpoint";
const RECEIVING: &str = "applied.log.recv";

/// Appends a line per applied item to `applied.log`. Its checkpoint image is
/// the prefix of `applied.log` up to the checkpoint.
struct DemoSm {
    dir: PathBuf,
    /// `applied.log`, open for reading and appending.
    file: File,
    /// Next instance to apply.
    next: InstanceId,
    /// Bytes in `applied.log`.
    len: u64,
    /// The persisted checkpoint: (next instance, length of `applied.log` there).
    durable: (InstanceId, u64),
    every: u64,
    /// `next`, for the status file.
    progress: Arc<AtomicU64>,
    /// A checkpoint being received: the file and the bytes written so far.
    receiving: Option<(File, u64)>,
}

impl DemoSm {
    fn open(dir: &Path, every: u64) -> io::Result<DemoSm> {
        fs::create_dir_all(dir)?;
        let durable = match fs::read_to_string(dir.join(CHECKPOINT_FILE)) {
            Ok(text) => parse_checkpoint(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(e),
        };
        let file = open_applied(dir)?;
        let size = file.metadata()?.len();
        if size < durable.1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{APPLIED_LOG} has {size} bytes, its checkpoint says {}",
                    durable.1
                ),
            ));
        }
        if size > durable.1 {
            // Applied after the checkpoint: these instances are applied again.
            info!(
                cut = size - durable.1,
                checkpoint = durable.0,
                "cutting {APPLIED_LOG} back to its checkpoint"
            );
            file.set_len(durable.1)?;
            file.sync_all()?;
        }
        // A transfer cut short by a crash.
        if let Err(e) = fs::remove_file(dir.join(RECEIVING))
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e);
        }
        info!(
            checkpoint = durable.0,
            bytes = durable.1,
            "state machine opened"
        );
        Ok(DemoSm {
            dir: dir.to_path_buf(),
            file,
            next: durable.0,
            len: durable.1,
            durable,
            every,
            progress: Arc::new(AtomicU64::new(durable.0)),
            receiving: None,
        })
    }

    fn try_apply(&mut self, instance: InstanceId, items: &[Vec<u8>]) -> io::Result<()> {
        if instance != self.next {
            return Err(io::Error::other(format!(
                "asked to apply instance {instance}, expected {}",
                self.next
            )));
        }
        let mut lines = String::new();
        if items.is_empty() {
            lines.push_str(&format!("{instance}\t-\t0\n"));
        }
        for item in items {
            let crc = crc32fast::hash(item);
            lines.push_str(&format!("{instance}\t{crc:08x}\t{}\n", item.len()));
        }
        (&self.file).write_all(lines.as_bytes())?;
        self.len += lines.len() as u64;
        self.next = instance + 1;
        self.progress.store(self.next, Ordering::Relaxed);
        if self.next - self.durable.0 >= self.every {
            self.persist()?;
        }
        Ok(())
    }

    /// Makes everything applied so far durable and records it as the checkpoint.
    fn persist(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        write_atomic(
            &self.dir,
            CHECKPOINT_FILE,
            format!("{} {}\n", self.next, self.len).as_bytes(),
        )?;
        self.durable = (self.next, self.len);
        Ok(())
    }

    fn finish_receiving(&mut self, checkpoint: InstanceId) -> io::Result<()> {
        let (file, len) = self
            .receiving
            .take()
            .ok_or_else(|| io::Error::other("no checkpoint transfer in progress"))?;
        file.sync_all()?;
        drop(file);
        // Swap the file in first, then record the checkpoint: a crash in between
        // leaves the old checkpoint, whose lines are a prefix of the new file.
        fs::rename(self.dir.join(RECEIVING), self.dir.join(APPLIED_LOG))?;
        sync_dir(&self.dir)?;
        self.file = open_applied(&self.dir)?;
        self.next = checkpoint;
        self.len = len;
        self.progress.store(checkpoint, Ordering::Relaxed);
        self.persist()
    }
}

impl StateMachine for DemoSm {
    type Output = ();

    fn apply(&mut self, instance: InstanceId, items: Vec<Vec<u8>>) -> Result<Vec<()>, ApplyError> {
        // An error stops the node (fail-stop, as on a log error); a restart
        // replays from the checkpoint.
        self.try_apply(instance, &items)?;
        Ok(vec![(); items.len()])
    }

    fn checkpoint(&self) -> InstanceId {
        self.durable.0
    }

    fn read_checkpoint(&mut self, offset: u64, max: usize) -> io::Result<CheckpointChunk> {
        let (checkpoint, len) = self.durable;
        if offset > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} past the checkpoint image ({len} bytes)"),
            ));
        }
        let n = (len - offset).min(max as u64) as usize;
        let mut data = vec![0; n];
        // The bytes below the checkpoint never change, whatever is appended later.
        self.file.read_exact_at(&mut data, offset)?;
        Ok(CheckpointChunk {
            checkpoint,
            data,
            done: offset + n as u64 == len,
        })
    }

    fn write_checkpoint(
        &mut self,
        checkpoint: InstanceId,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> io::Result<()> {
        if offset == 0 {
            self.receiving = Some((File::create(self.dir.join(RECEIVING))?, 0));
        }
        let Some((file, written)) = self.receiving.as_mut() else {
            return Err(io::Error::other("checkpoint chunk without a transfer"));
        };
        if offset != *written {
            return Err(io::Error::other(format!(
                "checkpoint chunk at {offset}, expected {written}"
            )));
        }
        file.write_all_at(data, offset)?;
        *written += data.len() as u64;
        if done {
            self.finish_receiving(checkpoint)?;
            info!(checkpoint, bytes = self.len, "checkpoint received");
        }
        Ok(())
    }
}

impl Drop for DemoSm {
    /// On a clean stop, record how far we got, so a restart replays nothing.
    fn drop(&mut self) {
        if self.next > self.durable.0
            && let Err(e) = self.persist()
        {
            warn!(error = %e, "cannot persist the checkpoint on stop");
        }
    }
}

fn open_applied(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(dir.join(APPLIED_LOG))
}

fn parse_checkpoint(text: &str) -> io::Result<(InstanceId, u64)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad checkpoint file: {text:?}"),
        )
    };
    let mut parts = text.split_whitespace();
    let next = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let len = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((next, len))
}

/// Replaces `dir/name` with `data` so that a crash leaves the old or the new
/// content, never a mix: write a temporary file, fsync, rename, fsync the dir.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
