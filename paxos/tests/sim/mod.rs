//! Deterministic simulation of a Paxos cluster: one seeded RNG, a simulated
//! clock and network, and the real `Core` on every node.
//!
//! The network drops, duplicates, delays and reorders messages and can be
//! partitioned; nodes crash (and lose nothing that was fsync'd, since the driver
//! syncs every `Ready` before acting on it), restart with a new clock epoch, and
//! hit disk write errors (a random prefix of the failing write survives, then the
//! node stops). Clocks run at different rates within the configured drift.
//!
//! After every event the invariants are checked:
//! - at most one value is chosen per instance, and every node's applied
//!   sequence is a prefix of one common sequence (no gaps, no repeats);
//! - a node's promise never goes backwards, even across a crash;
//! - no two nodes believe they hold the master lease at the same instant;
//! - an installed checkpoint equals the common sequence up to its instance.
//!
//! Then, with faults healed, the cluster must make progress (liveness).

#![allow(dead_code)]

use paxos::message::{LogRecord, Message};
use paxos::{
    Ballot, ChosenEntry, Core, CoreConfig, EntryReader, InstanceId, Membership, MembershipChange,
    MembershipOp, NodeId, Outcome, ProposalId, Recovery, SystemState, Value,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Simulated real time, in microseconds.
type RealTime = u64;

const MS: RealTime = 1_000;
const SEC: RealTime = 1_000_000;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// How long faults are injected.
    pub fault_time: RealTime,
    /// After healing, how long the cluster has to show progress.
    pub settle_time: RealTime,
    /// Grow the cluster by one node and shrink it again during the run.
    pub membership_changes: bool,
    /// Keep the log short so lagging nodes must install checkpoints.
    pub small_log: bool,
    pub lease_drift: f64,
}

impl SimConfig {
    /// A varied scenario derived from the seed alone.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
        SimConfig {
            seed,
            nodes: if rng.random_bool(0.3) { 5 } else { 3 },
            fault_time: 15 * SEC,
            settle_time: 20 * SEC,
            membership_changes: rng.random_bool(0.35),
            small_log: rng.random_bool(0.5),
            lease_drift: 0.05,
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: Message,
    },
    Tick(NodeId),
    Workload,
    Fault,
    Restart(NodeId),
    HealPartition,
    CheckpointTransfer {
        node: NodeId,
        peer: NodeId,
    },
    MembershipScript,
}

/// Durable storage of one node: segments of records, as the real log keeps them.
#[derive(Default)]
struct SimDisk {
    segments: Vec<Vec<LogRecord>>,
    /// Trailing records of the last segment not covered by an fsync yet: a
    /// crash loses any number of them (from the end).
    unsynced: usize,
}

impl SimDisk {
    fn append(&mut self, rec: LogRecord) {
        if self.segments.is_empty() {
            self.segments.push(Vec::new());
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.push(rec);
            self.unsynced += 1;
        }
    }

    fn sync(&mut self) {
        self.unsynced = 0;
    }

    /// A crash: the last `lost` (at most the unsynced) records are gone.
    fn lose_unsynced(&mut self, lost: usize) {
        let lost = lost.min(self.unsynced);
        if let Some(seg) = self.segments.last_mut() {
            seg.truncate(seg.len().saturating_sub(lost));
        }
        self.unsynced = 0;
    }

    fn remove_below(&mut self, below: InstanceId) {
        let last = self.segments.len() - 1;
        let mut kept = Vec::new();
        for (i, seg) in self.segments.drain(..).enumerate() {
            let removable = i != last
                && seg
                    .iter()
                    .filter_map(|r| r.instance())
                    .all(|inst| inst < below);
            if !removable {
                kept.push(seg);
            }
        }
        self.segments = kept;
    }

    fn read(&self, instance: InstanceId) -> Option<Value> {
        self.segments
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|r| r.instance() == Some(instance))
            .cloned()
            .and_then(LogRecord::into_value)
    }

    fn records(&self) -> impl Iterator<Item = &LogRecord> {
        self.segments.iter().flatten()
    }
}

struct DiskReader(Arc<Mutex<SimDisk>>);

impl EntryReader for DiskReader {
    fn read(&self, instance: InstanceId) -> Result<Option<Value>, String> {
        let disk = self.0.lock().map_err(|e| e.to_string())?;
        Ok(disk.read(instance))
    }
}

/// The application: a hash chain over everything applied, checkpointed now and then.
#[derive(Clone, Debug, Default)]
struct SimApp {
    next: InstanceId,
    hash: u64,
    durable_next: InstanceId,
    durable_hash: u64,
}

fn chain(prev: u64, entry: &ChosenEntry) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    entry.instance.hash(&mut h);
    entry.batch.hash(&mut h);
    for (_, item) in &entry.app {
        item.hash(&mut h);
    }
    h.finish()
}

struct SimNode {
    id: NodeId,
    core: Option<Core>,
    disk: Arc<Mutex<SimDisk>>,
    app: SimApp,
    clock_rate: f64,
    clock_offset: RealTime,
    /// Highest ballot this node ever answered a Prepare or Accept with: its promise
    /// may never drop below it, crash or not.
    max_answered: Ballot,
    last_promised: Ballot,
    incarnation: u64,
    started: bool,
    /// Founding member (has the initial system state) or joiner.
    founding: bool,
}

impl SimNode {
    fn local_time(&self, t: RealTime) -> Duration {
        let local = self.clock_offset as f64 + t as f64 * self.clock_rate;
        Duration::from_micros(local as u64)
    }
}

#[derive(Debug, Default)]
pub struct SimReport {
    pub chosen: u64,
    pub proposals_ok: u64,
    pub proposals_failed: u64,
    pub crashes: u64,
    pub disk_errors: u64,
    pub partitions: u64,
    pub switchovers: u64,
    pub checkpoint_installs: u64,
    pub masters: BTreeSet<NodeId>,
    pub final_members: Vec<NodeId>,
    pub events: u64,
}

pub struct Sim {
    cfg: SimConfig,
    rng: SmallRng,
    now: RealTime,
    seq: u64,
    queue: BinaryHeap<Reverse<(RealTime, u64)>>,
    events: HashMap<u64, Event>,
    nodes: BTreeMap<NodeId, SimNode>,
    initial: SystemState,
    /// Links that are cut: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_rate: f64,
    dup_rate: f64,
    max_latency: RealTime,
    faults: bool,
    /// The one common sequence: instance -> (batch, app items, hash after it).
    truth: BTreeMap<InstanceId, (paxos::value::BatchId, Vec<Vec<u8>>, u64)>,
    /// Our proposals awaiting their fate: (node, incarnation, proposal id).
    pending: HashMap<(NodeId, u64, ProposalId), RealTime>,
    next_value: u64,
    membership_step: usize,
    joiner: NodeId,
    report: SimReport,
    trace: VecDeque<String>,
    tracing: bool,
    /// The first broken invariant or core error, reported after the event.
    error: Option<String>,
}

fn drift_factor() -> f64 {
    std::env::var("PAXOS_SIM_DRIFT_FACTOR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn core_config(cfg: &SimConfig, id: NodeId, incarnation: u64) -> CoreConfig {
    let mut c = CoreConfig::new(id);
    c.incarnation = incarnation;
    c.rng_seed = cfg
        .seed
        .wrapping_mul(31)
        .wrapping_add(id * 7919 + incarnation);
    c.retry_interval = Duration::from_millis(60);
    c.commit_interval = Duration::from_millis(40);
    c.propose_timeout = Duration::from_secs(3);
    c.backoff_min = Duration::from_millis(5);
    c.backoff_max = Duration::from_millis(300);
    c.leader_quiet = Duration::from_millis(150);
    c.catch_up_timeout = Duration::from_millis(300);
    c.catch_up_bytes = 4096;
    c.max_batch_items = 16;
    c.max_inflight = 8;
    c.lease_duration = Duration::from_millis(1000);
    c.lease_drift = cfg.lease_drift;
    c.keep_instances = if cfg.small_log { 20 } else { 100_000 };
    c
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes as NodeId).collect();
        let initial = SystemState {
            membership: Membership::new(ids.iter().map(|id| (*id, format!("node-{id}")))),
            lease: Default::default(),
        };
        let joiner = cfg.nodes as NodeId + 1;
        let mut nodes = BTreeMap::new();
        let mut all = ids.clone();
        if cfg.membership_changes {
            all.push(joiner);
        }
        for id in all {
            // Clock rates differ by up to the drift the lease is configured for
            // (PAXOS_SIM_DRIFT_FACTOR > 1 breaks that promise, to see the check fire).
            let spread = cfg.lease_drift * drift_factor();
            let rate = 1.0 + rng.random_range(-spread..=spread);
            nodes.insert(
                id,
                SimNode {
                    id,
                    core: None,
                    disk: Arc::default(),
                    app: SimApp::default(),
                    clock_rate: rate,
                    clock_offset: rng.random_range(0..1000 * SEC),
                    max_answered: Ballot::ZERO,
                    last_promised: Ballot::ZERO,
                    incarnation: 0,
                    started: false,
                    founding: id != joiner,
                },
            );
        }
        let mut sim = Sim {
            drop_rate: rng.random_range(0.0..0.08),
            dup_rate: rng.random_range(0.0..0.05),
            max_latency: rng.random_range(1..15) * MS,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes,
            initial,
            cut: BTreeSet::new(),
            faults: true,
            truth: BTreeMap::new(),
            pending: HashMap::new(),
            next_value: 0,
            membership_step: 0,
            joiner,
            report: SimReport::default(),
            trace: VecDeque::new(),
            tracing: std::env::var_os("PAXOS_SIM_TRACE").is_some(),
            error: None,
            cfg,
        };
        for id in ids {
            sim.start_node(id);
        }
        sim.schedule(5 * MS, Event::Workload);
        sim.schedule(200 * MS, Event::Fault);
        if sim.cfg.membership_changes {
            sim.schedule(2 * SEC, Event::MembershipScript);
        }
        sim
    }

    fn schedule(&mut self, delay: RealTime, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn note(&mut self, f: impl FnOnce() -> String) {
        if self.tracing {
            eprintln!("[{:>10}us] {}", self.now, f());
        } else {
            if self.trace.len() >= 64 {
                self.trace.pop_front();
            }
            // Cheap: keep only the shape of recent events for failure reports.
            let s = f();
            self.trace
                .push_back(format!("[{}us] {}", self.now, truncate(&s, 160)));
        }
    }

    fn start_node(&mut self, id: NodeId) {
        let seed_incarnation = self.rng.random::<u32>() as u64;
        let new_offset = self.rng.random_range(0..1000 * SEC);
        let cfg = self.cfg.clone();
        let initial = self.initial.clone();
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("known node");
        node.incarnation = seed_incarnation;
        node.clock_offset = new_offset;
        // The application restarts from its durable checkpoint.
        node.app.next = node.app.durable_next;
        node.app.hash = node.app.durable_hash;
        let mut recovery = Recovery::new();
        {
            let disk = node.disk.lock().expect("disk lock");
            for rec in disk.records() {
                recovery.add(rec);
            }
        }
        let local = node.local_time(now);
        let core = Core::new(
            core_config(&cfg, id, seed_incarnation),
            if node.founding { Some(initial) } else { None },
            recovery,
            Box::new(DiskReader(node.disk.clone())),
            node.app.next,
            local,
        )
        .expect("core restores from its own log");
        node.last_promised = core.promised();
        node.core = Some(core);
        node.started = true;
        let tick = self.rng.random_range(1..5 * MS);
        self.schedule(tick, Event::Tick(id));
        self.process(id);
    }

    fn crash(&mut self, id: NodeId) {
        let lost = self.rng.random_range(0..4usize);
        if let Some(node) = self.nodes.get_mut(&id)
            && node.core.take().is_some()
        {
            node.disk.lock().expect("disk").lose_unsynced(lost);
            self.report.crashes += 1;
            let delay = self.rng.random_range(50 * MS..2 * SEC);
            self.schedule(delay, Event::Restart(id));
        }
    }

    fn up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.core.is_some())
    }

    /// Runs the whole scenario: faults, then healing and the liveness check.
    pub fn run(mut self) -> Result<SimReport, String> {
        let fault_end = self.cfg.fault_time;
        let end = fault_end + self.cfg.settle_time;
        let mut healed = false;
        let mut progress_mark: Option<(InstanceId, RealTime)> = None;
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            if !healed && t >= fault_end {
                healed = true;
                self.heal_all();
            }
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.report.events += 1;
            self.handle(ev);
            if let Some(e) = self.error.take() {
                return Err(self.failure(&e));
            }
            self.check_invariants().map_err(|e| self.failure(&e))?;
            if healed {
                // Liveness: once healed, within the settle time, a master must
                // exist, new values must be chosen and everyone must converge.
                if progress_mark.is_none() && t >= fault_end + 5 * SEC {
                    progress_mark = Some((self.max_applied(), t));
                }
                if let Some((mark, _)) = progress_mark
                    && self.converged(mark + 20)
                {
                    return Ok(self.finish());
                }
            }
        }
        let detail = format!(
            "liveness: no convergence {}s after healing (applied per node: {:?}, masters: {:?}, truth len {})",
            self.cfg.settle_time / SEC,
            self.applied_per_node(),
            self.masters_now(),
            self.truth.len()
        );
        Err(self.failure(&detail))
    }

    fn finish(mut self) -> SimReport {
        self.report.chosen = self.truth.len() as u64;
        self.report.final_members = self.current_members().into_iter().collect();
        self.report
    }

    fn failure(&self, what: &str) -> String {
        let trace: Vec<&str> = self.trace.iter().map(|s| s.as_str()).collect();
        format!(
            "simulation seed {} failed at {}us: {}\nconfig: {:?}\nlast events:\n{}\nreplay: PAXOS_SIM_SEED={} PAXOS_SIM_TRACE=1 cargo test -p paxos --test simulation replay_one_seed -- --nocapture",
            self.cfg.seed,
            self.now,
            what,
            self.cfg,
            trace.join("\n"),
            self.cfg.seed
        )
    }

    fn heal_all(&mut self) {
        self.faults = false;
        self.cut.clear();
        self.drop_rate = 0.0;
        self.dup_rate = 0.0;
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.core.is_none() && n.started)
            .map(|n| n.id)
            .collect();
        for id in down {
            self.start_node(id);
        }
        self.note(|| "heal all".into());
    }

    fn current_members(&self) -> BTreeSet<NodeId> {
        // The newest membership any up node has applied.
        self.nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.membership())
            .max_by_key(|m| m.version)
            .map(|m| m.all().map(|(id, _)| id).collect())
            .unwrap_or_default()
    }

    fn max_applied(&self) -> InstanceId {
        self.nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.applied())
            .max()
            .unwrap_or(0)
    }

    fn applied_per_node(&self) -> Vec<(NodeId, Option<InstanceId>)> {
        self.nodes
            .values()
            .map(|n| (n.id, n.core.as_ref().map(|c| c.applied())))
            .collect()
    }

    fn masters_now(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| {
                n.core
                    .as_ref()
                    .is_some_and(|c| c.is_master(n.local_time(self.now)))
            })
            .map(|n| n.id)
            .collect()
    }

    fn converged(&self, at_least: InstanceId) -> bool {
        let members = self.current_members();
        let applied: Vec<InstanceId> = members
            .iter()
            .filter_map(|id| self.nodes.get(id))
            .filter_map(|n| n.core.as_ref().map(|c| c.applied()))
            .collect();
        applied.len() == members.len()
            && applied.iter().all(|a| *a >= at_least && *a == applied[0])
            && self.masters_now().len() == 1
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Deliver { from, to, msg } => {
                if !self.up(to) {
                    return;
                }
                self.note(|| format!("{from}->{to} {}", summary(&msg)));
                let t = self.local(to);
                let result = self
                    .nodes
                    .get_mut(&to)
                    .and_then(|n| n.core.as_mut())
                    .map(|c| c.step(t, from, msg));
                if let Some(Err(e)) = result {
                    self.error
                        .get_or_insert(format!("core error on node {to}: {e}"));
                }
                self.process(to);
            }
            Event::Tick(id) => {
                if !self.up(id) {
                    return;
                }
                let t = self.local(id);
                if let Some(c) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
                    c.tick(t);
                }
                self.process(id);
                self.schedule(5 * MS, Event::Tick(id));
            }
            Event::Workload => {
                self.workload();
                let next = self.rng.random_range(1..6) * MS;
                self.schedule(next, Event::Workload);
            }
            Event::Fault => {
                if self.faults {
                    self.inject_fault();
                    let next = self.rng.random_range(100 * MS..600 * MS);
                    self.schedule(next, Event::Fault);
                }
            }
            Event::Restart(id) => {
                if !self.up(id) {
                    self.note(|| format!("restart {id}"));
                    self.start_node(id);
                }
            }
            Event::HealPartition => {
                self.cut.clear();
                self.note(|| "heal partition".into());
            }
            Event::CheckpointTransfer { node, peer } => self.checkpoint_transfer(node, peer),
            Event::MembershipScript => self.membership_script(),
        }
    }

    fn local(&self, id: NodeId) -> Duration {
        self.nodes
            .get(&id)
            .map(|n| n.local_time(self.now))
            .unwrap_or_default()
    }

    fn inject_fault(&mut self) {
        let ids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.started)
            .map(|n| n.id)
            .collect();
        match self.rng.random_range(0..12) {
            0..=2 => {
                let id = ids[self.rng.random_range(0..ids.len())];
                self.note(|| format!("crash {id}"));
                self.crash(id);
            }
            3..=4 => {
                // Split the nodes in two random groups.
                let mut side = BTreeMap::new();
                for id in &ids {
                    side.insert(*id, self.rng.random_bool(0.5));
                }
                for a in &ids {
                    for b in &ids {
                        if side[a] != side[b] {
                            self.cut.insert((*a, *b));
                        }
                    }
                }
                self.report.partitions += 1;
                let heal = self.rng.random_range(100 * MS..3 * SEC);
                self.note(|| format!("partition {side:?}"));
                self.schedule(heal, Event::HealPartition);
            }
            5 => {
                // Isolate the master, if there is one.
                if let Some(m) = self.masters_now().first().copied() {
                    for id in &ids {
                        if *id != m {
                            self.cut.insert((m, *id));
                            self.cut.insert((*id, m));
                        }
                    }
                    self.report.partitions += 1;
                    let heal = self.rng.random_range(500 * MS..4 * SEC);
                    self.note(|| format!("isolate master {m}"));
                    self.schedule(heal, Event::HealPartition);
                }
            }
            7 => {
                // Planned switchover: the master hands the lease to another node,
                // or to nobody.
                if let Some(m) = self.masters_now().first().copied() {
                    let to = if self.rng.random_bool(0.7) {
                        Some(ids[self.rng.random_range(0..ids.len())])
                    } else {
                        None
                    };
                    let t = self.local(m);
                    self.note(|| format!("switchover {m} -> {to:?}"));
                    if let Some(core) = self.nodes.get_mut(&m).and_then(|n| n.core.as_mut()) {
                        core.step_down(t, to);
                    }
                    self.report.switchovers += 1;
                    self.process(m);
                }
            }
            8 => {
                // The master changes the cluster's lease length (configured
                // 1 s): from too short (refused) to twice as long.
                if let Some(m) = self.masters_now().first().copied() {
                    let ms = self.rng.random_range(300..2000);
                    let t = self.local(m);
                    self.note(|| format!("lease length {ms} ms on {m}"));
                    if let Some(core) = self.nodes.get_mut(&m).and_then(|n| n.core.as_mut()) {
                        let _ = core.set_lease_duration(t, Duration::from_millis(ms));
                    }
                    self.process(m);
                }
            }
            6 => {
                self.drop_rate = self.rng.random_range(0.0..0.3);
                self.dup_rate = self.rng.random_range(0.0..0.1);
                self.max_latency = self.rng.random_range(1..50) * MS;
            }
            _ => {}
        }
    }

    fn workload(&mut self) {
        let masters = self.masters_now();
        let target = match masters.first() {
            Some(m) if self.rng.random_bool(0.9) => Some(*m),
            _ if self.rng.random_bool(0.1) => {
                let up: Vec<NodeId> = self
                    .nodes
                    .values()
                    .filter(|n| n.core.is_some())
                    .map(|n| n.id)
                    .collect();
                (!up.is_empty()).then(|| up[self.rng.random_range(0..up.len())])
            }
            _ => None,
        };
        let Some(id) = target else { return };
        self.next_value += 1;
        let data = format!("s{}-v{}", self.cfg.seed, self.next_value).into_bytes();
        let t = self.local(id);
        let now = self.now;
        if let Some(node) = self.nodes.get_mut(&id)
            && let Some(core) = node.core.as_mut()
        {
            let pid = core.propose(t, data);
            self.pending.insert((id, node.incarnation, pid), now);
        }
        self.process(id);
    }

    fn membership_script(&mut self) {
        let joiner = self.joiner;
        let members = self.current_members();
        let newest = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.membership().clone())
            .max_by_key(|m| m.version)
            .unwrap_or_default();
        let op = match self.membership_step {
            0 if !members.contains(&joiner) => Some(MembershipOp::AddLearner {
                node: joiner,
                addr: format!("node-{joiner}"),
            }),
            0 => {
                self.membership_step = 1;
                let started = self.nodes.get(&joiner).is_some_and(|n| n.started);
                if !started {
                    self.note(|| format!("start joiner {joiner}"));
                    self.start_node(joiner);
                }
                None
            }
            1 if !newest.is_voter(joiner) => {
                // Promote once the joiner has caught up with most of the log.
                let caught_up = self
                    .nodes
                    .get(&joiner)
                    .and_then(|n| n.core.as_ref())
                    .is_some_and(|c| c.applied() + 50 >= self.max_applied());
                caught_up.then_some(MembershipOp::Promote { node: joiner })
            }
            1 => {
                self.membership_step = 2;
                None
            }
            2 if newest.contains(1) => Some(MembershipOp::Remove { node: 1 }),
            2 => {
                self.membership_step = 3;
                None
            }
            _ => None,
        };
        if let Some(op) = op
            && let Some(m) = self.masters_now().first().copied()
        {
            let t = self.local(m);
            let change = MembershipChange {
                expect_version: newest.version,
                op: op.clone(),
            };
            self.note(|| format!("propose membership {op:?} at {m}"));
            if let Some(core) = self.nodes.get_mut(&m).and_then(|n| n.core.as_mut()) {
                core.propose_membership(t, change);
            }
            self.process(m);
        }
        if self.membership_step < 3 {
            self.schedule(300 * MS, Event::MembershipScript);
        }
    }

    fn checkpoint_transfer(&mut self, node: NodeId, peer: NodeId) {
        let reachable = self.up(node)
            && self.up(peer)
            && !self.cut.contains(&(node, peer))
            && !self.cut.contains(&(peer, node));
        let t = self.local(node);
        if !reachable {
            if let Some(c) = self.nodes.get_mut(&node).and_then(|n| n.core.as_mut()) {
                c.checkpoint_fetch_failed();
            }
            return;
        }
        let (app, log_start, system) = {
            let p = &self.nodes[&peer];
            let core = p.core.as_ref().expect("peer is up");
            let (start, system) = core.log_start();
            (p.app.clone(), start, system.clone())
        };
        let wanted = self.nodes[&node]
            .core
            .as_ref()
            .is_some_and(|c| c.wants_checkpoint(log_start));
        if !wanted {
            if let Some(c) = self.nodes.get_mut(&node).and_then(|n| n.core.as_mut()) {
                c.checkpoint_fetch_failed();
            }
            return;
        }
        self.note(|| {
            format!(
                "checkpoint {peer}->{node}: app at {}, log start {log_start}",
                app.durable_next
            )
        });
        self.report.checkpoint_installs += 1;
        let n = self.nodes.get_mut(&node).expect("node");
        n.app.next = app.durable_next;
        n.app.hash = app.durable_hash;
        n.app.durable_next = app.durable_next;
        n.app.durable_hash = app.durable_hash;
        if let Some(c) = n.core.as_mut() {
            assert!(c.install_checkpoint(t, peer, log_start, system, app.durable_next));
        }
        self.process(node);
    }

    /// Carries out every Ready of node `id`, as the real driver does.
    fn process(&mut self, id: NodeId) {
        loop {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let Some(core) = node.core.as_mut() else {
                return;
            };
            if !core.has_ready() {
                return;
            }
            let ready = match core.take_ready() {
                Ok(r) => r,
                Err(e) => {
                    self.error
                        .get_or_insert(format!("core error on node {id}: {e}"));
                    return;
                }
            };
            if ready.is_empty() {
                return; // e.g. a partial batch waiting for more items
            }
            // 1. Persist, maybe failing part-way.
            let disk_error =
                self.faults && !ready.records.is_empty() && self.rng.random_bool(0.002);
            let keep = if disk_error {
                self.rng.random_range(0..=ready.records.len())
            } else {
                ready.records.len()
            };
            let compact_below = ready.compact.as_ref().map(|c| c.below);
            {
                let node = self.nodes.get_mut(&id).expect("node");
                let mut disk = node.disk.lock().expect("disk");
                // The driver's order: new segment and header, records, one fsync,
                // then the removal of old segments.
                let (compact_below, header) = match ready.compact {
                    Some(c) => (Some(c.below), c.header),
                    None => (None, Vec::new()),
                };
                if compact_below.is_some() {
                    disk.sync();
                    disk.segments.push(header);
                }
                for rec in ready.records.into_iter().take(keep) {
                    disk.append(rec);
                }
            }
            // Requests leave before the fsync (the driver's order); answers
            // only after it.
            let (requests, answers): (Vec<_>, Vec<_>) = ready
                .messages
                .into_iter()
                .partition(|(_, m)| m.is_request());
            for (to, msg) in requests {
                self.track_answers(id, &msg);
                self.send(id, to, msg);
            }
            if disk_error {
                self.report.disk_errors += 1;
                self.note(|| format!("disk error on {id}: node stops"));
                self.crash(id);
                return;
            }
            {
                let node = self.nodes.get_mut(&id).expect("node");
                let mut disk = node.disk.lock().expect("disk");
                if ready.sync || compact_below.is_some() {
                    disk.sync();
                }
                if let Some(below) = compact_below {
                    disk.remove_below(below);
                }
            }
            // 2. Send the answers.
            for (to, msg) in answers {
                self.track_answers(id, &msg);
                self.send(id, to, msg);
            }
            // 3. Apply.
            for entry in ready.apply {
                if let Err(e) = self.apply(id, &entry) {
                    self.error.get_or_insert(e);
                }
            }
            // 4. Outcomes.
            let inc = self.nodes[&id].incarnation;
            for (pid, outcome) in ready.outcomes {
                if self.pending.remove(&(id, inc, pid)).is_some() {
                    match outcome {
                        Outcome::Applied(_) => self.report.proposals_ok += 1,
                        Outcome::Failed(_) => self.report.proposals_failed += 1,
                    }
                }
            }
            if let Some(peer) = ready.fetch_checkpoint {
                let delay = self.rng.random_range(5 * MS..50 * MS);
                self.schedule(delay, Event::CheckpointTransfer { node: id, peer });
            }
            let app_checkpoint = self.nodes[&id].app.durable_next;
            if let Some(c) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
                c.set_app_checkpoint(app_checkpoint);
            }
        }
    }

    fn track_answers(&mut self, id: NodeId, msg: &Message) {
        if let Message::Promise { ballot, .. } | Message::Accepted { ballot, .. } = msg
            && let Some(node) = self.nodes.get_mut(&id)
        {
            node.max_answered = node.max_answered.max(*ballot);
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
        if self.cut.contains(&(from, to)) || self.rng.random_bool(self.drop_rate) {
            return;
        }
        let latency = self.rng.random_range(50..=self.max_latency.max(51));
        if self.rng.random_bool(self.dup_rate) {
            let again = self.rng.random_range(50..=self.max_latency.max(51) * 2);
            self.schedule(
                again,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        self.schedule(latency, Event::Deliver { from, to, msg });
    }

    fn apply(&mut self, id: NodeId, entry: &ChosenEntry) -> Result<(), String> {
        let inc = self.nodes[&id].incarnation;
        let node = self.nodes.get_mut(&id).expect("node");
        if entry.instance != node.app.next {
            return Err(format!(
                "node {id} applied instance {} but expected {} (gap or repeat)",
                entry.instance, node.app.next
            ));
        }
        let hash = chain(node.app.hash, entry);
        node.app.hash = hash;
        node.app.next += 1;
        // The application makes a durable checkpoint every few instances.
        if node.app.next.is_multiple_of(7) {
            node.app.durable_next = node.app.next;
            node.app.durable_hash = node.app.hash;
        }
        let items: Vec<Vec<u8>> = entry.app.iter().map(|(_, d)| d.clone()).collect();
        match self.truth.get(&entry.instance) {
            Some((batch, truth_items, truth_hash)) => {
                if *batch != entry.batch || *truth_items != items {
                    return Err(format!(
                        "instance {} chosen twice: {:?} and, at node {id}, {:?}",
                        entry.instance, batch, entry.batch
                    ));
                }
                if *truth_hash != hash {
                    return Err(format!(
                        "node {id}'s state after instance {} differs from the common sequence",
                        entry.instance
                    ));
                }
            }
            None => {
                // A new instance must extend the common sequence.
                if let Some((last, _)) = self.truth.last_key_value()
                    && *last + 1 != entry.instance
                {
                    return Err(format!(
                        "node {id} applied instance {} beyond the common sequence end {last}",
                        entry.instance
                    ));
                }
                self.truth
                    .insert(entry.instance, (entry.batch, items, hash));
            }
        }
        for (pid, _) in &entry.app {
            if let Some(pid) = pid
                && self.pending.remove(&(id, inc, *pid)).is_some()
            {
                self.report.proposals_ok += 1;
            }
        }
        Ok(())
    }

    fn check_invariants(&mut self) -> Result<(), String> {
        // Promises never go backwards, across crashes included.
        for node in self.nodes.values_mut() {
            if let Some(core) = node.core.as_ref() {
                let p = core.promised();
                if p < node.max_answered {
                    return Err(format!(
                        "node {} promised {} but had answered at ballot {}",
                        node.id, p, node.max_answered
                    ));
                }
                if p < node.last_promised {
                    return Err(format!(
                        "node {} promise went back from {} to {}",
                        node.id, node.last_promised, p
                    ));
                }
                node.last_promised = p;
            }
        }
        // At most one lease holder at this instant, by each node's own clock.
        let masters = self.masters_now();
        if masters.len() > 1 {
            return Err(format!("two masters at once: {masters:?}"));
        }
        if let Some(m) = masters.first() {
            self.report.masters.insert(*m);
        }
        Ok(())
    }
}

/// A one-line description of a message, without its values.
fn summary(msg: &Message) -> String {
    match msg {
        Message::Prepare { ballot, from } => format!("prepare {ballot} from {from}"),
        Message::Promise {
            ballot,
            chosen_prefix,
            accepted,
            ..
        } => format!(
            "promise {ballot} cp {chosen_prefix} accepted {:?}",
            accepted
                .iter()
                .map(|e| (e.instance, e.ballot.to_string()))
                .collect::<Vec<_>>()
        ),
        Message::Accept {
            ballot,
            instance,
            value,
        } => format!(
            "accept {ballot} #{instance} batch {}.{} ({} items)",
            value.id.node,
            value.id.seq,
            value.items.len()
        ),
        Message::Accepted { ballot, instance } => format!("accepted {ballot} #{instance}"),
        Message::Reject { ballot, promised } => format!("reject {ballot} promised {promised}"),
        Message::Commit { ballot, upto } => format!("commit {ballot} upto {upto}"),
        Message::CatchUpResponse {
            entries,
            chosen_prefix,
        } => format!(
            "catch-up {} entries from {:?}, their cp {chosen_prefix}",
            entries.len(),
            entries.first().map(|e| e.0)
        ),
        other => format!("{other:?}"),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
