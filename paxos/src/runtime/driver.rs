//! The driver loop: the one owner of the core, the log and the state machine.

use super::StateMachine;
use super::checkpoint::Fetch;
use super::clock;
use super::error::{ProposeFailed, RuntimeError};
use super::handle::{Command, RuntimeCounters, Shared, StopReason};
use crate::core::{Compaction, Core, Outcome, Ready};
use crate::message::{LogRecord, Message};
use crate::storage::SegmentLog;
use crate::transport::{Incoming, Transport};
use crate::types::{InstanceId, NodeId, ProposalId};
use crate::value::{ChosenEntry, Membership};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

/// Most frames (and, separately, commands) fed to the core per loop turn on top
/// of the one that woke the loop; bounds the time between two `Ready`s.
const MAX_DRAIN: usize = 1024;

/// Someone waiting for the fate of a proposal.
enum Waiter<O> {
    App(oneshot::Sender<Result<(InstanceId, O), ProposeFailed>>),
    Membership(oneshot::Sender<Result<InstanceId, ProposeFailed>>),
    StepDown(oneshot::Sender<Result<Option<InstanceId>, ProposeFailed>>),
}

impl<O> Waiter<O> {
    fn fail(self, err: ProposeFailed) {
        // A send error means the caller stopped waiting; nothing to do.
        match self {
            Waiter::App(tx) => drop(tx.send(Err(err))),
            Waiter::Membership(tx) => drop(tx.send(Err(err))),
            Waiter::StepDown(tx) => drop(tx.send(Err(err))),
        }
    }
}

/// Whether the loop goes on after an event.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Shutdown,
}

pub(crate) struct Driver<SM: StateMachine> {
    pub(super) core: Core,
    pub(super) log: SegmentLog,
    pub(super) sm: SM,
    pub(super) transport: Transport,
    pub(super) incoming: mpsc::Receiver<Incoming>,
    pub(super) commands: mpsc::Receiver<Command<SM::Output>>,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: watch::Sender<Option<StopReason>>,
    pub(super) seeds: HashMap<NodeId, SocketAddr>,
    pub(super) tick_interval: Duration,
    waiters: HashMap<ProposalId, Waiter<SM::Output>>,
    pub(super) fetch: Option<Fetch>,
    pub(super) counters: RuntimeCounters,
    /// The peer table last given to the transport.
    peers: HashMap<NodeId, SocketAddr>,
}

impl<SM: StateMachine> Driver<SM> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Core,
        log: SegmentLog,
        sm: SM,
        transport: Transport,
        incoming: mpsc::Receiver<Incoming>,
        commands: mpsc::Receiver<Command<SM::Output>>,
        shared: Arc<Shared>,
        stop: watch::Sender<Option<StopReason>>,
        seeds: HashMap<NodeId, SocketAddr>,
        tick_interval: Duration,
    ) -> Self {
        Driver {
            core,
            log,
            sm,
            transport,
            incoming,
            commands,
            shared,
            stop,
            seeds,
            tick_interval,
            waiters: HashMap::new(),
            fetch: None,
            counters: RuntimeCounters::default(),
            peers: HashMap::new(),
        }
    }

    pub fn node(&self) -> NodeId {
        self.core.node_id()
    }

    /// Runs until shutdown or a fatal error, then stops the node.
    pub async fn run(mut self) {
        let result = self.run_loop().await;
        match &result {
            Ok(()) => info!(node = self.node(), "node stopped"),
            Err(e) => error!(node = self.node(), error = %e, "fatal error, node stopped"),
        }
        self.transport.shutdown();
        for (_, waiter) in self.waiters.drain() {
            waiter.fail(ProposeFailed::NodeStopped);
        }
        self.shared.published().master = None;
        // Close the log and drop the state machine before anyone hears that the
        // node stopped: the application may reopen the data directory right away.
        let stop = self.stop.clone();
        drop(self);
        stop.send_replace(Some(result.map_err(Arc::new)));
    }

    async fn run_loop(&mut self) -> Result<(), RuntimeError> {
        let mut ticker = tokio::time::interval(self.tick_interval);
        // After a long stall (a slow fsync) tick once, not in a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

        // The first Ready holds the membership (-> peer table); the state machine
        // may also already allow a compaction.
        self.core.set_app_checkpoint(self.sm.checkpoint());
        self.process_ready()?;
        self.publish();

        loop {
            let mut flow = tokio::select! {
                Some(frame) = self.incoming.recv() => {
                    self.on_frame(frame)?;
                    Flow::Continue
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd)?,
                    // Every handle is gone: nobody can use this node any more.
                    None => Flow::Shutdown,
                },
                _ = ticker.tick() => {
                    self.on_tick()?;
                    Flow::Continue
                }
            };
            if flow == Flow::Continue {
                flow = self.drain()?;
            }
            // Even on shutdown, finish what the core has in hand: an accept it
            // granted is made durable (and answered) before the node stops.
            self.process_ready()?;
            self.publish();
            if flow == Flow::Shutdown {
                return Ok(());
            }
        }
    }

    /// Group commit: feeds the core whatever else is already waiting, so the
    /// next `Ready` (and its single fsync) covers all of it.
    fn drain(&mut self) -> Result<Flow, RuntimeError> {
        for _ in 0..MAX_DRAIN {
            match self.incoming.try_recv() {
                Ok(frame) => self.on_frame(frame)?,
                Err(_) => break,
            }
        }
        for _ in 0..MAX_DRAIN {
            match self.commands.try_recv() {
                Ok(cmd) => {
                    if self.on_command(cmd)? == Flow::Shutdown {
                        return Ok(Flow::Shutdown);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(Flow::Shutdown),
            }
        }
        Ok(Flow::Continue)
    }

    fn on_frame(&mut self, frame: Incoming) -> Result<(), RuntimeError> {
        self.counters.messages_received += 1;
        let msg = match Message::decode(&frame.payload) {
            Ok(msg) => msg,
            Err(e) => {
                self.counters.undecodable_messages += 1;
                warn!(node = self.node(), from = frame.from, error = %e, "undecodable message dropped");
                return Ok(());
            }
        };
        match msg {
            // Checkpoint transfers are the driver's business; the core ignores them.
            Message::CheckpointRequest { offset } => self.serve_checkpoint(frame.from, offset),
            Message::CheckpointChunk {
                checkpoint,
                log_start,
                system,
                offset,
                data,
                done,
            } => self.on_checkpoint_chunk(
                frame.from, checkpoint, log_start, system, offset, data, done,
            )?,
            msg => self.core.step(clock::now(), frame.from, msg)?,
        }
        Ok(())
    }

    fn on_command(&mut self, cmd: Command<SM::Output>) -> Result<Flow, RuntimeError> {
        let now = clock::now();
        match cmd {
            Command::Propose { data, reply } => {
                let id = self.core.propose(now, data);
                self.waiters.insert(id, Waiter::App(reply));
            }
            Command::ProposeMembership { change, reply } => {
                let id = self.core.propose_membership(now, change);
                self.waiters.insert(id, Waiter::Membership(reply));
            }
            Command::SetLeaseDuration { duration, reply } => {
                match self.core.set_lease_duration(now, duration) {
                    // A system value: resolved like a membership change.
                    Ok(id) => {
                        self.waiters.insert(id, Waiter::Membership(reply));
                    }
                    Err(e) => drop(reply.send(Err(ProposeFailed::Core(e)))),
                }
            }
            Command::StepDown { to, reply } => {
                match self.core.step_down(now, to) {
                    Some(id) => {
                        self.waiters.insert(id, Waiter::StepDown(reply));
                    }
                    None => drop(reply.send(Ok(None))),
                }
                // The core no longer claims the lease: publish that before the
                // handle may claim it again.
                let master = self.master_snapshot();
                let mut p = self.shared.published();
                p.pending_step_downs = p.pending_step_downs.saturating_sub(1);
                p.master = master;
            }
            Command::Status { reply } => drop(reply.send(self.core.status())),
            Command::Shutdown => return Ok(Flow::Shutdown),
        }
        Ok(Flow::Continue)
    }

    fn on_tick(&mut self) -> Result<(), RuntimeError> {
        let now = clock::now();
        // The application's deferred group commit, if it has one due.
        self.sync_app()?;
        self.core.set_app_checkpoint(self.sm.checkpoint());
        self.core.set_may_campaign(self.sm.may_campaign());
        self.core.tick(now);
        self.check_fetch_stall(now);
        Ok(())
    }

    fn sync_app(&mut self) -> Result<(), RuntimeError> {
        self.sm
            .sync()
            .map_err(|e| RuntimeError::StateMachine(format!("state machine sync: {e}")))
    }

    /// Carries out every `Ready` the core has.
    fn process_ready(&mut self) -> Result<(), RuntimeError> {
        while self.core.has_ready() {
            let ready = self.core.take_ready()?;
            if ready.is_empty() {
                break;
            }
            self.counters.readies += 1;
            self.carry_out(ready)?;
            // Lets the core drop log entries the application made durable (the
            // compaction comes in the next Ready).
            self.core.set_app_checkpoint(self.sm.checkpoint());
        }
        Ok(())
    }

    /// Carries out one `Ready`, in the order the core documents.
    fn carry_out(&mut self, ready: Ready) -> Result<(), RuntimeError> {
        let Ready {
            records,
            sync,
            compact,
            messages,
            apply,
            outcomes,
            membership,
            fetch_checkpoint,
        } = ready;

        // 1. A compaction starts a new segment with its header, ahead of the
        //    records: they may describe instances the removal must not lose.
        if let Some(c) = &compact {
            self.log.roll()?;
            self.append(&c.header)?;
        }
        // 2. The records, then one fsync for all of it (group commit).
        self.append(&records)?;
        // The peer table before any message: a message to a member that was
        // just added would otherwise be dropped for want of a route.
        if let Some(membership) = membership {
            self.update_peers(&membership);
        }
        // Requests (an Accept above all) vouch for nothing in this log: they
        // leave before the fsync, so the followers' fsyncs overlap ours. Their
        // answers are handled only once this Ready is done, fsync included.
        let (requests, answers): (Vec<_>, Vec<_>) =
            messages.into_iter().partition(|(_, m)| m.is_request());
        for (to, msg) in requests {
            self.send(to, &msg);
        }
        if sync {
            self.log.sync()?;
            self.counters.log_syncs += 1;
        }
        // 3. With the header durable, drop what it replaces.
        if let Some(c) = compact {
            self.remove_compacted(c)?;
        }

        // 4. Answers: only now, with everything they promise durable.
        for (to, msg) in answers {
            self.send(to, &msg);
        }

        // 5. Apply, in order.
        let applied = !apply.is_empty();
        for entry in apply {
            self.apply(entry)?;
        }

        // 6. Outcomes.
        for (id, outcome) in outcomes {
            self.deliver(id, outcome);
        }

        // 7. The application's group commit, off the outputs' path (what it
        //    applied is already durable in this log).
        if applied {
            self.sync_app()?;
        }

        if let Some(peer) = fetch_checkpoint {
            self.start_fetch(peer);
        }
        Ok(())
    }

    fn append(&mut self, records: &[LogRecord]) -> Result<(), RuntimeError> {
        for record in records {
            self.log.append(record.instance(), &record.encode())?;
        }
        self.counters.records_appended += records.len() as u64;
        Ok(())
    }

    /// Step 3 of a compaction: remove the segments the (durable) header replaces.
    fn remove_compacted(&mut self, c: Compaction) -> Result<(), RuntimeError> {
        let removed = self.log.remove_segments_below(c.below)?;
        self.counters.compactions += 1;
        debug!(
            node = self.node(),
            below = c.below,
            removed_segments = removed,
            "log compacted"
        );
        Ok(())
    }

    pub(super) fn send(&mut self, to: NodeId, msg: &Message) {
        let payload = msg.encode();
        if payload.is_empty() {
            error!(
                node = self.node(),
                to,
                kind = msg.kind(),
                "message failed to encode"
            );
            return;
        }
        self.counters.messages_sent += 1;
        self.transport.send(to, Bytes::from(payload));
    }

    fn apply(&mut self, entry: ChosenEntry) -> Result<(), RuntimeError> {
        let ChosenEntry { instance, app, .. } = entry;
        let (ids, items): (Vec<Option<ProposalId>>, Vec<Vec<u8>>) = app.into_iter().unzip();
        let count = items.len();
        let outputs = self
            .sm
            .apply(instance, items)
            .map_err(|source| RuntimeError::Apply { instance, source })?;
        if outputs.len() != count {
            return Err(RuntimeError::StateMachine(format!(
                "apply returned {} outputs for the {count} items of instance {instance}",
                outputs.len()
            )));
        }
        self.counters.instances_applied += 1;
        self.counters.items_applied += count as u64;
        for (id, output) in ids.into_iter().zip(outputs) {
            let Some(id) = id else { continue };
            match self.waiters.remove(&id) {
                Some(Waiter::App(tx)) => drop(tx.send(Ok((instance, output)))),
                Some(other) => {
                    warn!(
                        node = self.node(),
                        id, "application item carries a non-application proposal id"
                    );
                    other.fail(ProposeFailed::NodeStopped);
                }
                // The proposer stopped waiting (or this is the core's own item).
                None => {}
            }
        }
        Ok(())
    }

    fn deliver(&mut self, id: ProposalId, outcome: Outcome) {
        // Lease proposals the core makes on its own have no waiter.
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        match (waiter, outcome) {
            (waiter, Outcome::Failed(e)) => waiter.fail(ProposeFailed::Core(e)),
            (Waiter::Membership(tx), Outcome::Applied(at)) => drop(tx.send(Ok(at))),
            (Waiter::StepDown(tx), Outcome::Applied(at)) => drop(tx.send(Ok(Some(at)))),
            (Waiter::App(tx), Outcome::Applied(at)) => {
                // Application items resolve through `apply`, which has the output.
                warn!(
                    node = self.node(),
                    id, at, "application proposal got a system outcome"
                );
                drop(tx);
            }
        }
    }

    /// Points the transport at the members (plus the seeds while this node does
    /// not know the membership yet).
    fn update_peers(&mut self, membership: &Membership) {
        let me = self.node();
        let mut peers = HashMap::new();
        for (id, addr) in membership.all() {
            if id == me {
                continue;
            }
            match resolve(addr) {
                Some(sock) => {
                    peers.insert(id, sock);
                }
                None => warn!(node = me, peer = id, addr, "cannot resolve member address"),
            }
        }
        if membership.voters.is_empty() {
            for (&id, &addr) in &self.seeds {
                if id != me {
                    peers.entry(id).or_insert(addr);
                }
            }
        }
        if peers != self.peers {
            info!(node = me, version = membership.version, peers = ?peers, "peer table updated");
            self.transport.set_peers(peers.clone());
            self.peers = peers;
        }
    }

    /// Makes the handles' view current.
    fn publish(&self) {
        let master = self.master_snapshot();
        let counters = self.core.counters();
        let mut p = self.shared.published();
        p.master = master;
        p.lease_version = self.core.lease_version();
        p.lease_duration = self.core.lease_duration();
        p.counters = counters;
        p.runtime = self.counters.clone();
    }

    /// The core's view of the master, with the lease end as a point on the node
    /// clock: for this node, `now + left` is exactly the core's own lease end.
    fn master_snapshot(&self) -> Option<(NodeId, crate::types::Time)> {
        let now = clock::now();
        self.core.master(now).map(|(node, left)| (node, now + left))
    }
}

/// A member address as a socket address (normally already `ip:port`).
fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(sock) = addr.parse() {
        return Some(sock);
    }
    addr.to_socket_addrs().ok()?.next()
}
