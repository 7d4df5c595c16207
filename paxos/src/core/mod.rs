//! The consensus core: acceptor, proposer, learner, lease and membership as one
//! deterministic state machine with no I/O.
//!
//! A driver feeds it messages ([`Core::step`]), timer ticks ([`Core::tick`]) and
//! proposals ([`Core::propose`]), then takes a [`Ready`] and carries it out in this
//! order:
//!
//! 1. if `compact` is set: start a new segment and append its `header`;
//! 2. append `records`; send the messages that are requests
//!    ([`Message::is_request`]: they vouch for nothing in this log, so a
//!    leader's fsync overlaps its followers'); then fsync once (group commit)
//!    if `sync` is set;
//! 3. if `compact` is set: remove the segments below `below` (the header, now
//!    durable, replaces what they held);
//! 4. send the other `messages`, the answers (only now: a promise or accept is
//!    never answered before it is durable);
//! 5. apply `apply` to the application state machine, in order;
//! 6. deliver `outcomes` to whoever proposed.
//!
//! The header goes first because `records` may describe instances above the new
//! log start that must survive the removal.
//!
//! The driver must finish a `Ready` before it calls into the core again, so every
//! later step sees the log as the core left it. Reads of old chosen values go
//! through the [`EntryReader`] the core was built with.

mod acceptor;
mod config;
mod learner;
mod lease;
mod metrics;
mod proposer;
mod recovery;

pub use config::CoreConfig;
pub use metrics::Counters;
pub use recovery::Recovery;

use crate::message::{LogRecord, Message};
use crate::types::{Ballot, InstanceId, NodeId, ProposalId, Time};
use crate::value::{
    BatchId, ChosenEntry, Item, LeaseProposal, Membership, MembershipChange, SystemState, Value,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Read access to chosen values that are in the durable log.
pub trait EntryReader: Send {
    /// The newest value logged for `instance`, if the log still holds it.
    fn read(&self, instance: InstanceId) -> Result<Option<Value>, String>;
}

/// A failure that stops the node: its state can no longer be trusted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("reading the log failed: {0}")]
    Storage(String),
    #[error("the log lacks chosen instance {0} that it should hold")]
    MissingEntry(InstanceId),
    #[error(
        "the application checkpoint {app} is below the log start {log_start}: install a checkpoint from a peer"
    )]
    AppBehindLog {
        app: InstanceId,
        log_start: InstanceId,
    },
}

/// Why a proposal did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("another value was chosen for the instance this proposal was placed in")]
    NotChosen,
    #[error("no instance could be won for the proposal in time")]
    Timeout,
    #[error("refused: {0}")]
    Rejected(String),
    #[error(
        "outcome unknown: this node skipped past the proposal's instance by installing a checkpoint"
    )]
    Indeterminate,
}

/// The result of a proposal. Application items that were chosen appear in
/// [`Ready::apply`] with their proposal id instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A lease or membership change took effect at this instance.
    Applied(InstanceId),
    Failed(ProposeError),
}

/// Work for the driver; see the module docs for the order.
#[derive(Debug, Default)]
pub struct Ready {
    pub records: Vec<LogRecord>,
    /// Whether `records` (and the compaction header) must be fsync'd before the
    /// messages leave. False when the only records are lazy ones (a leader's
    /// chosen-prefix marker) that nothing sent depends on: they are written and
    /// ride along with the next fsync, saving the leader one fsync per value.
    pub sync: bool,
    pub compact: Option<Compaction>,
    pub messages: Vec<(NodeId, Message)>,
    pub apply: Vec<ChosenEntry>,
    pub outcomes: Vec<(ProposalId, Outcome)>,
    /// The membership changed: update the transport's peer table.
    pub membership: Option<Membership>,
    /// Start fetching a checkpoint from this peer, then call
    /// [`Core::install_checkpoint`].
    pub fetch_checkpoint: Option<NodeId>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.compact.is_none()
            && self.messages.is_empty()
            && self.apply.is_empty()
            && self.outcomes.is_empty()
            && self.membership.is_none()
            && self.fetch_checkpoint.is_none()
    }
}

/// Start a new segment with `header` (before this Ready's records), then, once
/// durable, drop every older segment whose instances are all below `below`.
#[derive(Debug, Clone, PartialEq)]
pub struct Compaction {
    pub below: InstanceId,
    pub header: Vec<LogRecord>,
}

/// One instance as this node's acceptor/learner holds it.
#[derive(Debug, Clone)]
struct Slot {
    ballot: Ballot,
    value: Value,
    chosen: bool,
}

/// A proposal waiting for an instance.
#[derive(Debug)]
struct Queued {
    id: ProposalId,
    item: Item,
    queued_at: Time,
}

#[derive(Debug)]
struct Inflight {
    value: Value,
    acks: BTreeSet<NodeId>,
    sent_at: Time,
}

#[derive(Debug)]
enum Role {
    Follower,
    Preparing {
        ballot: Ballot,
        from: InstanceId,
        promises: BTreeMap<NodeId, PromiseInfo>,
        sent_at: Time,
    },
    Leading(Leading),
}

#[derive(Debug)]
struct PromiseInfo {
    chosen_prefix: InstanceId,
    accepted: Vec<crate::message::AcceptedEntry>,
}

#[derive(Debug)]
struct Leading {
    ballot: Ballot,
    next_instance: InstanceId,
    inflight: BTreeMap<InstanceId, Inflight>,
    /// First instance this leader proposed in: once it is chosen, the leader has
    /// committed in its own ballot (required before a membership change).
    first_instance: InstanceId,
    commit_sent: InstanceId,
    commit_sent_at: Time,
    /// Instance of an in-flight membership change: nothing is proposed past it
    /// until it is applied, so every later instance uses the new majority.
    membership_barrier: Option<InstanceId>,
}

/// The lease as this node sees it (not replicated).
#[derive(Debug, Default)]
struct LeaseView {
    /// Until when the current master's lease is respected here (local time).
    expires_at: Time,
    /// Extra random wait before campaigning, so that nodes whose view of the lease
    /// ends at the same moment do not all campaign at once.
    campaign_jitter: Time,
    /// Until when this node may act as master, if it is.
    self_until: Option<Time>,
    /// Our own lease proposal in flight: (proposal id, expected version, proposed at).
    pending: Option<(ProposalId, u64, Time)>,
    /// Last time we proposed a renewal.
    last_proposed: Time,
}

#[derive(Debug)]
struct CatchUp {
    peer: NodeId,
    sent_at: Time,
}

pub struct Core {
    cfg: CoreConfig,
    rng: SmallRng,
    reader: Box<dyn EntryReader>,
    now: Time,

    // Acceptor.
    promised: Ballot,
    /// Highest ballot seen anywhere; a new ballot goes above it.
    max_seen: Ballot,

    // Log and learner.
    log_start: InstanceId,
    log_start_system: SystemState,
    /// Every instance below it is chosen and known here.
    chosen_prefix: InstanceId,
    /// Highest chosen prefix handed to the driver as a `ChosenPrefix` record.
    durable_chosen_prefix: InstanceId,
    /// Highest chosen prefix whose record was covered by an fsync: what a
    /// CommitAck may vouch for (the marker itself rides on the next fsync).
    synced_chosen_prefix: InstanceId,
    slots: BTreeMap<InstanceId, Slot>,
    /// Next instance to apply.
    applied: InstanceId,
    /// The application already holds every instance below this.
    app_checkpoint: InstanceId,
    system: SystemState,
    /// System state after each change: (first instance it holds for, state).
    system_history: Vec<(InstanceId, SystemState)>,
    last_membership_instance: Option<InstanceId>,
    catch_up: Option<CatchUp>,
    /// Members' chosen prefixes, from their commit acks.
    peer_progress: HashMap<NodeId, InstanceId>,
    /// No system state yet: a joining node that must install a checkpoint first.
    bootstrapping: bool,
    fetching_checkpoint: Option<(NodeId, Time)>,

    // Proposer.
    role: Role,
    queue: VecDeque<Queued>,
    next_proposal: ProposalId,
    next_batch_seq: u64,
    /// Our batches placed in instances whose fate we have not learned yet.
    placed: BTreeMap<InstanceId, (BatchId, Vec<ProposalId>)>,
    backoff_until: Time,
    /// Ballots lost in a row (sets the backoff range).
    losses: u32,
    /// When another proposer last made progress here (its Commit moved our
    /// chosen prefix). A proposer that only sends (one cut off from its
    /// peers' answers, say) makes none, so it does not keep the others from
    /// campaigning.
    last_foreign_progress: Option<Time>,

    // Lease.
    lease: LeaseView,
    may_campaign: bool,

    ready: Ready,
    counters: Counters,
}

/// Public status snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub node: NodeId,
    pub promised: Ballot,
    pub leader_ballot: Option<Ballot>,
    pub chosen_prefix: InstanceId,
    pub applied: InstanceId,
    pub log_start: InstanceId,
    pub membership: Membership,
    pub lease_master: Option<NodeId>,
    pub lease_version: u64,
    pub is_master: bool,
    pub queued: usize,
    pub inflight: usize,
    pub bootstrapping: bool,
}

impl Core {
    /// Builds the core from what the log held.
    ///
    /// `initial` is the system state of a brand-new cluster (its first members);
    /// `None` for a node joining an existing cluster, which installs a checkpoint
    /// from the first member that contacts it. `app_checkpoint` is the application's
    /// own durable position: every instance below it is already applied there.
    pub fn new(
        cfg: CoreConfig,
        initial: Option<SystemState>,
        recovery: Recovery,
        reader: Box<dyn EntryReader>,
        app_checkpoint: InstanceId,
        now: Time,
    ) -> Result<Core, CoreError> {
        let restored = recovery.finish();
        let bootstrapping = restored.snapshot.is_none() && initial.is_none();
        let (log_start, log_start_system) = restored
            .snapshot
            .or_else(|| initial.map(|s| (0, s)))
            .unwrap_or_default();
        if !bootstrapping && app_checkpoint < log_start {
            return Err(CoreError::AppBehindLog {
                app: app_checkpoint,
                log_start,
            });
        }
        let mut slots = BTreeMap::new();
        let mut chosen_prefix = restored.chosen_prefix.max(log_start);
        for (&instance, &(ballot, chosen)) in restored.entries.range(chosen_prefix..) {
            let value = reader
                .read(instance)
                .map_err(CoreError::Storage)?
                .ok_or(CoreError::MissingEntry(instance))?;
            slots.insert(
                instance,
                Slot {
                    ballot,
                    value,
                    chosen,
                },
            );
        }
        while slots.get(&chosen_prefix).is_some_and(|s| s.chosen) {
            chosen_prefix += 1;
        }
        let max_seen = restored.promised;
        let mut core = Core {
            rng: SmallRng::seed_from_u64(cfg.rng_seed),
            reader,
            now,
            promised: restored.promised,
            max_seen,
            log_start,
            system: log_start_system.clone(),
            log_start_system,
            chosen_prefix,
            durable_chosen_prefix: chosen_prefix,
            synced_chosen_prefix: chosen_prefix,
            slots,
            applied: log_start,
            app_checkpoint,
            system_history: Vec::new(),
            last_membership_instance: None,
            catch_up: None,
            peer_progress: HashMap::new(),
            bootstrapping,
            fetching_checkpoint: None,
            role: Role::Follower,
            queue: VecDeque::new(),
            next_proposal: 1,
            next_batch_seq: 0,
            placed: BTreeMap::new(),
            backoff_until: now,
            losses: 0,
            last_foreign_progress: None,
            lease: LeaseView::default(),
            may_campaign: true,
            ready: Ready::default(),
            counters: Counters::default(),
            cfg,
        };
        // Whatever lease the log names, respect it for a full term from now: a
        // restarted node never resumes a lease, and others may still hold one.
        core.set_lease_expiry(now + core.lease_wait_unknown());
        core.ready.membership = Some(core.system.membership.clone());
        Ok(core)
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    pub fn membership(&self) -> &Membership {
        &self.system.membership
    }

    pub fn system_state(&self) -> &SystemState {
        &self.system
    }

    /// Every instance below this is chosen and known to this node.
    pub fn chosen_prefix(&self) -> InstanceId {
        self.chosen_prefix
    }

    /// Next instance to apply.
    pub fn applied(&self) -> InstanceId {
        self.applied
    }

    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The first instance the log holds, and the system state there. A peer that
    /// installs our checkpoint starts from these.
    pub fn log_start(&self) -> (InstanceId, &SystemState) {
        (self.log_start, &self.log_start_system)
    }

    pub fn status(&self) -> Status {
        Status {
            node: self.cfg.node_id,
            promised: self.promised,
            leader_ballot: match &self.role {
                Role::Leading(l) => Some(l.ballot),
                _ => None,
            },
            chosen_prefix: self.chosen_prefix,
            applied: self.applied,
            log_start: self.log_start,
            membership: self.system.membership.clone(),
            lease_master: self.system.lease.master,
            lease_version: self.system.lease.version,
            is_master: self.is_master(self.now),
            queued: self.queue.len(),
            inflight: match &self.role {
                Role::Leading(l) => l.inflight.len(),
                _ => 0,
            },
            bootstrapping: self.bootstrapping,
        }
    }

    /// Feeds one message from `from`.
    pub fn step(&mut self, now: Time, from: NodeId, msg: Message) -> Result<(), CoreError> {
        self.advance_time(now);
        match msg {
            Message::Prepare {
                ballot,
                from: start,
            } => self.on_prepare(from, ballot, start),
            Message::Promise {
                ballot,
                chosen_prefix,
                membership_version,
                accepted,
            } => self.on_promise(from, ballot, chosen_prefix, membership_version, accepted),
            Message::Accept {
                ballot,
                instance,
                value,
            } => self.on_accept(from, ballot, instance, value),
            Message::Accepted { ballot, instance } => self.on_accepted(from, ballot, instance),
            Message::Reject { ballot, promised } => self.on_reject(ballot, promised),
            Message::Commit { ballot, upto } => self.on_commit(from, ballot, upto),
            Message::CommitAck { chosen_prefix, .. } => {
                let p = self.peer_progress.entry(from).or_default();
                *p = (*p).max(chosen_prefix);
            }
            Message::CatchUpRequest {
                from: start,
                max_bytes,
            } => self.on_catch_up_request(from, start, max_bytes)?,
            Message::CatchUpResponse {
                entries,
                chosen_prefix,
            } => self.on_catch_up_response(from, entries, chosen_prefix),
            Message::CatchUpTruncated { log_start } => self.on_catch_up_truncated(from, log_start),
            // Checkpoint transfers are the drivers' business.
            Message::CheckpointRequest { .. } | Message::CheckpointChunk { .. } => {
                self.counters.messages_ignored += 1
            }
        }
        Ok(())
    }

    /// Advances timers: retries, commit heartbeats, lease renewal and campaigns,
    /// proposal timeouts, catch-up timeouts.
    pub fn tick(&mut self, now: Time) {
        self.advance_time(now);
        self.proposer_tick();
        self.learner_tick();
        self.lease_tick();
    }

    /// Queues an application value. Its fate arrives in a later `Ready`: in
    /// `apply` (chosen) or in `outcomes` (failed).
    pub fn propose(&mut self, now: Time, data: Vec<u8>) -> ProposalId {
        self.advance_time(now);
        self.enqueue(Item::App(data), false)
    }

    /// Proposes a membership change (compare-and-set on the membership version).
    pub fn propose_membership(&mut self, now: Time, change: MembershipChange) -> ProposalId {
        self.advance_time(now);
        self.enqueue(Item::Membership(change), false)
    }

    /// Hands back everything the driver must do now.
    pub fn take_ready(&mut self) -> Result<Ready, CoreError> {
        self.flush_queue();
        self.pump_apply()?;
        if let Role::Leading(l) = &mut self.role
            && self.chosen_prefix > l.commit_sent
        {
            let (ballot, upto) = (l.ballot, self.chosen_prefix);
            l.commit_sent = upto;
            l.commit_sent_at = self.now;
            self.broadcast_commit(ballot, upto);
        }
        if self.chosen_prefix > self.durable_chosen_prefix {
            self.durable_chosen_prefix = self.chosen_prefix;
            self.ready.records.push(LogRecord::ChosenPrefix {
                upto: self.chosen_prefix,
            });
        }
        // Everything in the log but the chosen-prefix marker is a promise, an
        // accept or a learned value, which answers depend on: those need the
        // fsync. The marker alone does not: it rides on the next fsync, and a
        // CommitAck (membership changes wait for a majority of them) vouches
        // only for the prefix an fsync already covered, so acknowledging a
        // Commit costs a follower no fsync of its own.
        let r = &mut self.ready;
        // When a Commit brings nothing new (the leader's heartbeat, i.e. the
        // stream paused), its CommitAck flushes the markers not yet covered,
        // so membership changes never wait on a quiet log.
        r.sync = r.compact.is_some()
            || r.records
                .iter()
                .any(|rec| !matches!(rec, LogRecord::ChosenPrefix { .. }))
            || (r.records.is_empty()
                && self.synced_chosen_prefix < self.durable_chosen_prefix
                && r.messages
                    .iter()
                    .any(|(_, m)| matches!(m, Message::CommitAck { .. })));
        if r.sync {
            // Once this Ready is carried out, every record so far is durable.
            self.synced_chosen_prefix = self.durable_chosen_prefix;
        }
        let synced = self.synced_chosen_prefix;
        for (_, m) in &mut r.messages {
            if let Message::CommitAck { chosen_prefix, .. } = m {
                *chosen_prefix = (*chosen_prefix).min(synced);
            }
        }
        Ok(std::mem::take(&mut self.ready))
    }

    /// True while there is something to hand out: pending work, an apply backlog,
    /// or queued proposals that can be placed (or a Prepare started) right now.
    /// A driver should call `take_ready` as soon as this is true: a proposal must
    /// not wait for the next tick. (An empty `Ready` may still come back, e.g. when
    /// a partial batch waits for more items; stop looping then.)
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || self.applied < self.chosen_prefix || self.can_flush()
    }

    fn can_flush(&self) -> bool {
        if self.queue.is_empty() || self.bootstrapping {
            return false;
        }
        match &self.role {
            Role::Leading(l) => {
                l.inflight.len() < self.cfg.max_inflight && l.membership_barrier.is_none()
            }
            Role::Preparing { .. } => false,
            Role::Follower => self.may_prepare(),
        }
    }

    /// A follower may start a Prepare: not backing off, and no other proposer
    /// has been seen making progress lately.
    fn may_prepare(&self) -> bool {
        let leader_busy = self
            .last_foreign_progress
            .is_some_and(|t| self.now < t + self.cfg.leader_quiet);
        self.now >= self.backoff_until && !leader_busy
    }

    fn advance_time(&mut self, now: Time) {
        // Time never goes backwards inside the core, whatever the driver does.
        if now > self.now {
            self.now = now;
        }
    }

    fn members_except_self(&self) -> Vec<NodeId> {
        let me = self.cfg.node_id;
        self.system
            .membership
            .all()
            .map(|(id, _)| id)
            .filter(|id| *id != me)
            .collect()
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.ready.messages.push((to, msg));
    }

    fn random_between(&mut self, lo: Time, hi: Time) -> Time {
        use rand::Rng;
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_micros() as u64;
        lo + Time::from_micros(self.rng.random_range(0..=span))
    }

    fn new_batch_id(&mut self) -> BatchId {
        self.next_batch_seq += 1;
        BatchId {
            node: self.cfg.node_id,
            incarnation: self.cfg.incarnation,
            seq: self.next_batch_seq,
        }
    }

    fn lease_item(&self, node: Option<NodeId>) -> Item {
        Item::Lease(LeaseProposal {
            node,
            expect_version: self.system.lease.version,
            duration_ms: self.lease_duration().as_millis() as u64,
        })
    }

    /// The system state in force at `instance` (after applying everything below it).
    fn system_at(&self, instance: InstanceId) -> SystemState {
        self.system_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= instance)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| self.log_start_system.clone())
    }

    fn value_of(&self, instance: InstanceId) -> Result<Value, CoreError> {
        if let Some(slot) = self.slots.get(&instance) {
            return Ok(slot.value.clone());
        }
        self.reader
            .read(instance)
            .map_err(CoreError::Storage)?
            .ok_or(CoreError::MissingEntry(instance))
    }
}
