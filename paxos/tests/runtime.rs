//! In-process tests of the tokio runtime: several nodes in one test process,
//! talking over loopback TCP, each with an in-memory state machine.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use anyhow::{Context, Result, bail, ensure};
use paxos::runtime::{ApplyError, CheckpointChunk, Node, NodeConfig, NodeHandle, StateMachine};
use paxos::storage::{LogOptions, SegmentLog};
use paxos::{
    InstanceId, Membership, MembershipChange, MembershipOp, NodeId, ProposeFailed, RuntimeError,
    SystemState,
};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

const CLUSTER: u64 = 0xAB;
/// Generous: the machine may be busy building.
const WAIT: Duration = Duration::from_secs(30);

/// What a state machine has applied; shared with the test (and across restarts
/// of a node, standing in for the application's durable state).
#[derive(Default, Debug)]
struct MemState {
    applied: Vec<(InstanceId, Vec<Vec<u8>>)>,
    next: InstanceId,
    receiving: Vec<u8>,
    /// Broken promises of the runtime (instances out of order).
    violations: Vec<String>,
}

#[derive(Clone, Default)]
struct MemSm {
    state: Arc<Mutex<MemState>>,
    /// Break the output contract (one output per item) from this instance on.
    bad_outputs_from: Option<InstanceId>,
    /// Fail to apply from this instance on.
    failing_from: Option<InstanceId>,
}

impl MemSm {
    fn state(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap()
    }

    /// The application items applied, in order.
    fn items(&self) -> Vec<Vec<u8>> {
        let s = self.state();
        s.applied
            .iter()
            .flat_map(|(_, items)| items.iter().cloned())
            .collect()
    }
}

impl StateMachine for MemSm {
    /// The item's position among all items applied here.
    type Output = usize;

    fn apply(
        &mut self,
        instance: InstanceId,
        items: Vec<Vec<u8>>,
    ) -> Result<Vec<usize>, ApplyError> {
        let mut s = self.state();
        if instance != s.next {
            let msg = format!("applied {instance}, expected {}", s.next);
            s.violations.push(msg);
        }
        s.next = instance + 1;
        let before: usize = s.applied.iter().map(|(_, i)| i.len()).sum();
        let n = items.len();
        s.applied.push((instance, items));
        if self.failing_from.is_some_and(|from| instance >= from) && n > 0 {
            return Err("disk full (simulated)".into());
        }
        if self.bad_outputs_from.is_some_and(|from| instance >= from) && n > 0 {
            return Ok(Vec::new());
        }
        Ok((before..before + n).collect())
    }

    /// Everything applied counts as durable here.
    fn checkpoint(&self) -> InstanceId {
        self.state().next
    }

    fn read_checkpoint(&mut self, offset: u64, max: usize) -> std::io::Result<CheckpointChunk> {
        let s = self.state();
        let image = postcard::to_allocvec(&s.applied).map_err(std::io::Error::other)?;
        let start = (offset as usize).min(image.len());
        let end = (start + max).min(image.len());
        Ok(CheckpointChunk {
            checkpoint: s.next,
            data: image[start..end].to_vec(),
            done: end == image.len(),
        })
    }

    fn write_checkpoint(
        &mut self,
        checkpoint: InstanceId,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> std::io::Result<()> {
        let mut s = self.state();
        if offset == 0 {
            s.receiving.clear();
        }
        if offset as usize != s.receiving.len() {
            return Err(std::io::Error::other("chunk out of order"));
        }
        s.receiving.extend_from_slice(data);
        if done {
            let image = std::mem::take(&mut s.receiving);
            s.applied = postcard::from_bytes(&image).map_err(std::io::Error::other)?;
            s.next = checkpoint;
        }
        Ok(())
    }
}

fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?)
}

fn config(id: NodeId, addr: SocketAddr, dir: &Path) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, CLUSTER, addr, dir.join(format!("node{id}")));
    // A short lease: the first master is elected after one lease term.
    cfg.core.lease_duration = Duration::from_millis(600);
    cfg
}

fn founding(addrs: &[SocketAddr]) -> SystemState {
    SystemState {
        membership: Membership::new(
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (i as NodeId + 1, a.to_string())),
        ),
        ..SystemState::default()
    }
}

struct TestNode {
    handle: NodeHandle<usize>,
    sm: MemSm,
}

async fn start_cluster(
    dir: &Path,
    n: usize,
    tune: impl Fn(&mut NodeConfig),
) -> Result<(Vec<SocketAddr>, Vec<TestNode>)> {
    let addrs = free_addrs(n)?;
    let initial = founding(&addrs);
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut cfg = config(i as NodeId + 1, *addr, dir);
        cfg.initial = Some(initial.clone());
        tune(&mut cfg);
        let sm = MemSm::default();
        let handle = Node::start(cfg, sm.clone()).await?;
        nodes.push(TestNode { handle, sm });
    }
    Ok((addrs, nodes))
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn wait_master(nodes: &[TestNode]) -> Result<usize> {
    let mut master = None;
    wait_until("a master", || {
        master = nodes.iter().position(|n| n.handle.is_master());
        master.is_some()
    })
    .await?;
    master.context("no master")
}

fn check_no_violations(nodes: &[TestNode]) -> Result<()> {
    for (i, n) in nodes.iter().enumerate() {
        let v = &n.sm.state().violations;
        ensure!(v.is_empty(), "node {}: {v:?}", i + 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_apply_everywhere_and_step_down_hands_over() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (_, nodes) = start_cluster(tmp.path(), 3, |_| {}).await?;
    let m = wait_master(&nodes).await?;
    let master = &nodes[m].handle;
    let (id, left) = master.master().context("master() is None on the master")?;
    ensure!(id == m as NodeId + 1 && left <= Duration::from_millis(600));
    // Every other node knows who the master is.
    for n in &nodes {
        wait_until("the lease to be known", || {
            n.handle.master().is_some_and(|(x, _)| x == id)
        })
        .await?;
    }

    // Concurrent proposals: each resolves with its instance and its output.
    let mut tasks = Vec::new();
    for k in 0..50u32 {
        let h = master.clone();
        tasks.push(tokio::spawn(async move {
            h.propose(format!("value-{k}").into_bytes()).await
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        let (_, position) = t.await??;
        positions.push(position);
    }
    positions.sort_unstable();
    ensure!(
        positions == (0..50).collect::<Vec<_>>(),
        "outputs {positions:?}"
    );

    let expected = nodes[m].sm.items();
    ensure!(expected.len() == 50);
    wait_until("every node applied the same items", || {
        nodes.iter().all(|n| n.sm.items() == expected)
    })
    .await?;

    // Hand the lease to the next node: the old master stops claiming it at once.
    let to = (m + 1) % 3;
    let step = {
        let h = master.clone();
        tokio::spawn(async move { h.step_down(Some(to as NodeId + 1)).await })
    };
    wait_until("the old master to stop claiming the lease", || {
        !master.is_master()
    })
    .await?;
    let at = step.await??;
    ensure!(at.is_some(), "step_down on the master did nothing");
    wait_until("the new master", || nodes[to].handle.is_master()).await?;
    ensure!(!master.is_master());
    // Stepping down when not master is a no-op.
    ensure!(master.step_down(None).await?.is_none());

    let c = nodes[to].handle.counters();
    ensure!(c.core.lease_acquired >= 1 && c.runtime.log_syncs > 0);
    ensure!(c.transport.frames_sent > 0 && c.transport.frames_received > 0);
    check_no_violations(&nodes)?;
    for n in nodes {
        n.handle.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_node_and_fails_later_calls() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (_, nodes) = start_cluster(tmp.path(), 1, |_| {}).await?;
    let m = wait_master(&nodes).await?;
    let h = nodes[m].handle.clone();
    let (instance, pos) = h.propose(b"one".to_vec()).await?;
    ensure!(pos == 0);
    nodes[m].handle.clone().shutdown().await;
    ensure!(h.stopped().await.is_ok());
    ensure!(h.fatal_error().is_none());
    ensure!(!h.is_master() && h.master().is_none());
    ensure!(matches!(
        h.propose(b"two".to_vec()).await,
        Err(ProposeFailed::NodeStopped)
    ));
    ensure!(h.status().await.is_err());

    // A restart replays from the application's checkpoint: nothing is applied
    // twice and the node goes on where it stopped.
    let addr = h.local_addr();
    let sm = nodes[m].sm.clone();
    let mut cfg = config(1, addr, tmp.path());
    cfg.initial = Some(founding(&[addr]));
    let h = Node::start(cfg, sm.clone()).await?;
    wait_until("mastership after restart", || h.is_master()).await?;
    let (again, _) = h.propose(b"two".to_vec()).await?;
    ensure!(again > instance);
    ensure!(sm.items() == vec![b"one".to_vec(), b"two".to_vec()]);
    check_no_violations(&[TestNode {
        handle: h.clone(),
        sm,
    }])?;
    h.shutdown().await;
    Ok(())
}

/// One node over `sm`, which fails on the first item: the proposal of that
/// item fails with `NodeStopped`, and the node stops with an error
/// (returned, with the node's handle, for the caller to check).
async fn stopped_by(sm: MemSm) -> Result<(NodeHandle<usize>, Arc<RuntimeError>)> {
    let tmp = tempfile::tempdir()?;
    let addr = free_addrs(1)?[0];
    let mut cfg = config(1, addr, tmp.path());
    cfg.initial = Some(founding(&[addr]));
    let h = Node::start(cfg, sm).await?;
    wait_until("mastership", || h.is_master()).await?;
    let result = h.propose(b"x".to_vec()).await;
    ensure!(
        matches!(result, Err(ProposeFailed::NodeStopped)),
        "got {result:?}"
    );
    let err = h
        .stopped()
        .await
        .err()
        .context("stopped() without an error")?;
    Ok((h, err))
}

/// A state machine that cannot apply (its disk is full, say) stops the node
/// with its own error, which the application can report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_stops_the_node_with_its_error() -> Result<()> {
    let (h, err) = stopped_by(MemSm {
        failing_from: Some(0),
        ..MemSm::default()
    })
    .await?;
    ensure!(matches!(*err, RuntimeError::Apply { .. }), "got {err}");
    ensure!(
        err.to_string().contains("disk full (simulated)"),
        "the error names the cause: {err}"
    );
    ensure!(!h.is_master());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_contract_violation_is_fatal() -> Result<()> {
    let (h, err) = stopped_by(MemSm {
        bad_outputs_from: Some(0),
        ..MemSm::default()
    })
    .await?;
    ensure!(matches!(*err, RuntimeError::StateMachine(_)), "got {err}");
    ensure!(h.fatal_error().is_some());
    ensure!(!h.is_master());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_log_record_refuses_to_start() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let addr = free_addrs(1)?[0];
    let cfg = config(1, addr, tmp.path());
    // A record with a valid checksum whose payload is not a LogRecord.
    let (mut log, _) = SegmentLog::open(&cfg.data_dir.join("paxos"), LogOptions::default())?;
    log.append(Some(3), &[0xff, 0xff, 0xff, 0xff])?;
    log.sync()?;
    drop(log);
    match Node::start(cfg, MemSm::default()).await {
        Err(RuntimeError::CorruptRecord { index: 0, .. }) => Ok(()),
        Err(e) => bail!("unexpected error: {e}"),
        Ok(_) => bail!("started on a corrupt log"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_through_a_checkpoint_transfer() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // A tiny log window, so the founders compact away the start of the log and
    // the joiner can only start from a checkpoint.
    let (addrs, nodes) = start_cluster(tmp.path(), 3, |cfg| cfg.core.keep_instances = 4).await?;
    let m = wait_master(&nodes).await?;
    let master = nodes[m].handle.clone();
    for k in 0..40u32 {
        master.propose(format!("before-{k}").into_bytes()).await?;
    }
    wait_until("the founders to compact their logs", || {
        nodes
            .iter()
            .all(|n| n.handle.counters().core.compactions > 0)
    })
    .await?;

    // The joiner knows nobody's membership, only where to find the founders.
    let joiner_addr = free_addrs(1)?[0];
    let mut cfg = config(4, joiner_addr, tmp.path());
    cfg.seeds = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as NodeId + 1, *a))
        .collect::<HashMap<_, _>>();
    let joiner_sm = MemSm::default();
    let joiner = Node::start(cfg, joiner_sm.clone()).await?;
    let version = master.status().await?.membership.version;
    master
        .propose_membership(MembershipChange {
            expect_version: version,
            op: MembershipOp::AddLearner {
                node: 4,
                addr: joiner_addr.to_string(),
            },
        })
        .await?;
    for k in 0..10u32 {
        master.propose(format!("after-{k}").into_bytes()).await?;
    }
    let expected = nodes[m].sm.items();
    wait_until("the learner to catch up", || joiner_sm.items() == expected).await?;
    let c = joiner.counters();
    // At least one: with a 4-instance window the founders may compact past the
    // installed checkpoint while the joiner catches up, and it installs again.
    ensure!(
        c.runtime.checkpoints_installed >= 1,
        "installed no checkpoint"
    );
    let status = joiner.status().await?;
    ensure!(!status.bootstrapping && status.membership.learners.contains_key(&4));
    check_no_violations(&nodes)?;
    ensure!(joiner_sm.state().violations.is_empty());
    joiner.shutdown().await;
    for n in nodes {
        n.handle.shutdown().await;
    }
    Ok(())
}
