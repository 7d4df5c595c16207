//! The write path: while this node holds the master lease, read the local
//! MariaDB's binlog as a semi-sync replica, propose the transactions
//! through Paxos, and ACK them once chosen.
//!
//! One session = one dump connection:
//!
//! 1. wait until `is_master()`;
//! 2. connect a [`SemiSyncClient`] with connect state = the GTID position
//!    after the last transaction this process acknowledged (at process
//!    start: the store's last position); a task reads whole transactions
//!    into a bounded channel;
//! 3. take whatever is available (at most [`MAX_BATCH_BYTES`] and
//!    `max_batch_transactions`), build a [`BinlogValue`] on the log's
//!    *predicted* end (position, rolling checksum) and submit it without
//!    waiting: up to `max_inflight` values, holding less than
//!    `max_inflight_bytes` (so that a lease renewal, applied in log order,
//!    never queues behind much data), are in flight, each built on the
//!    end the ones before it will leave (the state machine's own arithmetic,
//!    `extend_tail`). Values submitted in order are placed in order, so in
//!    the normal case each one's compare-and-set holds; if one fails, every
//!    later one fails its compare-and-set too.
//!    A transaction larger than `max_value_bytes` waits until nothing is in
//!    flight and is then proposed alone, split into parts of at most that
//!    many bytes, one [`PartValue`] per Paxos value, one after the other,
//!    each waiting for the previous one to be chosen and applied
//!    (`PartHeld`);
//! 4. outcomes are taken oldest first: `Applied` where predicted (for a
//!    split transaction: of its last part): ACK the last transaction's
//!    (file, pos) (an ACK at a position releases every commit waiting at or
//!    before it). The pipeline is shallow in practice (measured: 1.5
//!    values in flight on average under sysbench, as MariaDB's group
//!    commit holds later groups while one waits for its ACK); it saves
//!    waiting for the previous value's outcome before proposing the next
//!    group;
//! 5. `Conflict`, `Rejected`, an unexpected position, a failed proposal, a
//!    lost lease, a dump error: no further ACK, drop the dump (values still
//!    in flight are not waited for: the next session finds whatever of
//!    them was chosen in the store), log, back to 1.
//!
//! Transactions the dump sends that the store already holds (chosen by an
//! earlier proposal whose outcome this process did not see, e.g. a value
//! re-proposed by the core after a lost lease) are acknowledged without a
//! proposal: they are chosen. Nothing else is ever acknowledged.
//!
//! A split transaction interrupted midway (lost lease, conflict, crash) is
//! not acknowledged; the parts chosen so far stay invisible to readers. The
//! next session (here or on a new master) gets the whole transaction from
//! the dump again (MariaDB rolls back what was never acknowledged on the
//! old master). If the store's unfinished transaction is this one, built on
//! the same position and cut the same way (its running checksum equals
//! ours after as many parts), the remaining parts are proposed and complete
//! it: progress survives lease losses, which matters for a transaction of
//! hundreds of MiB. Otherwise (another GTID, another cut, the log moved)
//! it is proposed from part 0, which abandons the unfinished parts. Parts
//! of an old attempt chosen late conflict (the state machine's
//! compare-and-set on parts); a conflict ends the session, and the next
//! one decides again from the store's state.
//!
//! After a process restart nothing is known about what was acknowledged,
//! and the local master may hold commits waiting for transactions that
//! were chosen but never acknowledged (the process died in between). So
//! the first session starts one transaction *before* the store's end: the
//! dump sends the last chosen transaction again, it is found in the store
//! and acknowledged, and that ACK releases every commit waiting at or
//! before it. (If that connect state fails, later sessions start at the
//! store's end.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use binlog::GtidPos;
use paxos::NodeHandle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::state_machine::{Progress, extend_tail};
use super::value::{
    ApplyOutcome, BinlogValue, DEFAULT_INFLIGHT_BYTES, DEFAULT_VALUE_BYTES, MAX_BATCH_BYTES,
    MIN_VALUE_BYTES, PartValue,
};
use crate::semisync::{
    Acker, ReplTransaction, SemiSyncClient, SemiSyncConfig, SemiSyncError, TransactionReader,
};
use crate::store::StoreReader;

/// Settings of the write path.
#[derive(Debug, Clone)]
pub struct WritePathConfig {
    /// How to reach the local master (`connect_state` is set per session).
    pub semisync: SemiSyncConfig,
    /// Most transactions in one proposal.
    pub max_batch_transactions: usize,
    /// Most bytes in one proposal.
    pub max_batch_bytes: usize,
    /// Most values in flight at once (submitted, outcome not yet seen).
    /// Each is built on the predicted end of the ones before it; they are
    /// acknowledged in order.
    pub max_inflight: usize,
    /// Most transaction bytes in flight at once: no new value is submitted
    /// while those in flight hold this many (one always may be; so the
    /// bound is this plus one batch).
    pub max_inflight_bytes: usize,
    /// Largest transaction proposed whole; a larger one is split into parts
    /// of at most this many bytes (at least [`MIN_VALUE_BYTES`]).
    pub max_value_bytes: usize,
    /// Pause after a session ends with an error.
    pub retry_delay: Duration,
    /// How often the lease is checked while waiting.
    pub poll_interval: Duration,
}

impl WritePathConfig {
    /// The defaults around a semi-sync configuration.
    pub fn new(semisync: SemiSyncConfig) -> Self {
        WritePathConfig {
            semisync,
            max_batch_transactions: 1024,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_inflight_bytes: DEFAULT_INFLIGHT_BYTES,
            max_value_bytes: DEFAULT_VALUE_BYTES,
            retry_delay: Duration::from_millis(200),
            poll_interval: Duration::from_millis(20),
        }
    }
}

/// Counters of the write path.
#[derive(Debug, Default)]
pub struct WriteMetrics {
    pub sessions_started: AtomicU64,
    pub sessions_connected: AtomicU64,
    pub connect_failures: AtomicU64,
    pub proposals: AtomicU64,
    pub proposals_applied: AtomicU64,
    pub proposals_conflict: AtomicU64,
    pub proposals_rejected: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub transactions_proposed: AtomicU64,
    pub transactions_acked: AtomicU64,
    pub transactions_acked_known: AtomicU64,
    pub acks_sent: AtomicU64,
    pub lease_lost: AtomicU64,
    pub dump_errors: AtomicU64,
    pub bytes_proposed: AtomicU64,
    /// Transactions proposed in parts (counted per attempt).
    pub transactions_split: AtomicU64,
    /// Part values proposed.
    pub parts_proposed: AtomicU64,
    /// Split transactions continued from parts chosen by an earlier session.
    pub transactions_resumed: AtomicU64,
    /// Sum over submitted values of the values already in flight then
    /// (divided by `proposals`: the pipeline's mean depth).
    pub inflight_at_submit: AtomicU64,
    /// Sum over settled values of the microseconds from submit to ACK
    /// (divided by `proposals_applied`: the mean time a value is in flight).
    pub inflight_micros: AtomicU64,
    /// 1 while a dump session is connected.
    pub active: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("lost the master lease")]
    LostLease,
    #[error("shutting down")]
    Shutdown,
    #[error("semi-sync connection: {0}")]
    SemiSync(#[from] SemiSyncError),
    #[error("the dump reader stopped")]
    ReaderGone,
    #[error("compare-and-set conflict: the log ends at {pos} (checksum {checksum:#010x})")]
    Conflict { pos: String, checksum: u32 },
    #[error("a value was applied at {applied}, not at the predicted {expected} (bug)")]
    Diverged { expected: String, applied: String },
    #[error("batch rejected: {0}")]
    Rejected(String),
    #[error("proposal failed: {0}")]
    ProposeFailed(#[from] paxos::ProposeFailed),
    #[error("cannot encode the value: {0}")]
    Encode(#[from] postcard::Error),
    #[error(
        "transaction {gtid} is {len} bytes, more than the {max} bytes one value may carry, in a batch with others (bug)"
    )]
    TooLarge {
        gtid: String,
        len: usize,
        max: usize,
    },
}

/// The log's end as the write path predicts it.
#[derive(Debug, Clone)]
struct Tail {
    pos: GtidPos,
    checksum: u32,
}

/// A value submitted and not yet settled.
struct InFlight {
    pending: paxos::Pending<ApplyOutcome>,
    /// Its transactions, in order (the last one's end is what gets ACKed).
    batch: Vec<ReplTransaction>,
    /// The log's end once it is applied.
    expect: Tail,
    /// When it was submitted.
    submitted: std::time::Instant,
    /// Its transactions' bytes.
    bytes: usize,
}

/// The outcome of the oldest value in flight; never resolves while none is.
async fn front_outcome(
    inflight: &mut VecDeque<InFlight>,
) -> Result<(paxos::InstanceId, ApplyOutcome), paxos::ProposeFailed> {
    match inflight.front_mut() {
        Some(f) => (&mut f.pending).await,
        None => std::future::pending().await,
    }
}

/// Aborts the reader task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The write path of one node.
pub struct WritePath {
    cfg: WritePathConfig,
    handle: NodeHandle<ApplyOutcome>,
    progress: Arc<Progress>,
    metrics: Arc<WriteMetrics>,
    /// GTID position after the last transaction acknowledged by this process.
    acked_upto: Option<GtidPos>,
    /// The first session's rewound start was tried.
    rewind_tried: bool,
    /// Set by the agent once the local MariaDB is promoted (`None`: no
    /// agent, the lease alone decides).
    gate: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The store's GTID position without its last transaction (that domain
/// set back to its previous GTID, or left out if the store has none
/// before it). `None` when the store is empty or the previous GTID of the
/// domain is not within the last [`REWIND_SCAN`] transactions.
fn rewound_position(reader: &StoreReader) -> Option<GtidPos> {
    let end = reader.end_index();
    let first = reader.first_index();
    if end == 0 || end <= first {
        return None;
    }
    let read_gtid = |i: u64| -> Option<binlog::Gtid> {
        let entries = reader.read_from_blocking(i, 1).ok()?;
        entries.first().map(|e| e.transaction.gtid())
    };
    let last = read_gtid(end - 1)?;
    let mut pos = reader.gtid_pos();
    pos.remove(last.domain);
    let mut i = end - 1;
    let mut scanned = 0;
    while i > first {
        i -= 1;
        scanned += 1;
        if scanned > REWIND_SCAN {
            return None;
        }
        let g = read_gtid(i)?;
        if g.domain == last.domain {
            pos.set(g);
            return Some(pos);
        }
    }
    // Nothing of that domain held before it: the trimmed boundary, if any.
    if let Some(g) = reader.trimmed_pos().get(last.domain) {
        pos.set(g);
    }
    Some(pos)
}

/// Environment variable of the test crash point: `N` makes the process
/// abort when it is about to acknowledge the N-th value this process saw
/// chosen and applied, i.e. after the choice and before the ACK (the design
/// brief's server_id trap is tested with it). Unset in production.
pub const CRASH_BEFORE_ACK_ENV: &str = "PHXBINLOGSVR_CRASH_BEFORE_ACK";

/// Aborts the process at the [`CRASH_BEFORE_ACK_ENV`] point, if set.
fn crash_point_before_ack(applied: u64) {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var(CRASH_BEFORE_ACK_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if *at == Some(applied) {
        tracing::error!(
            applied,
            "{CRASH_BEFORE_ACK_ENV}: aborting after the choice, before the ACK"
        );
        std::process::abort();
    }
}

/// Default of [`WritePathConfig::max_inflight`].
pub const DEFAULT_MAX_INFLIGHT: usize = 8;

/// Longest pause between connection attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How far back [`rewound_position`] looks for the previous GTID of a domain.
const REWIND_SCAN: u32 = 1000;

impl WritePath {
    /// A write path over a running node and its state machine's progress.
    pub fn new(
        cfg: WritePathConfig,
        handle: NodeHandle<ApplyOutcome>,
        progress: Arc<Progress>,
        metrics: Arc<WriteMetrics>,
    ) -> Self {
        WritePath {
            cfg,
            handle,
            progress,
            metrics,
            acked_upto: None,
            rewind_tried: false,
            gate: None,
        }
    }

    /// Run only while `gate` is set, besides holding the lease.
    pub fn with_gate(mut self, gate: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Holds the lease and, with an agent, is let through by it.
    fn may_write(&self) -> bool {
        self.handle.is_master() && self.gate.as_ref().is_none_or(|g| g.load(Ordering::Acquire))
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // Sessions in a row that did not get connected.
        let mut failures: u32 = 0;
        loop {
            // 1. Wait for the lease.
            while !self.may_write() {
                if *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
            if *shutdown.borrow() {
                return;
            }
            inc(&self.metrics.sessions_started);
            let connected_before = self.metrics.sessions_connected.load(Ordering::Relaxed);
            let end = self.session(&mut shutdown).await;
            if self.metrics.sessions_connected.load(Ordering::Relaxed) == connected_before {
                failures = failures.saturating_add(1);
            } else {
                failures = 0;
            }
            self.metrics.active.store(0, Ordering::Relaxed);
            match &end {
                SessionEnd::Shutdown => return,
                SessionEnd::LostLease => {
                    inc(&self.metrics.lease_lost);
                    tracing::warn!(
                        "write path: lost the master lease; dump dropped, nothing more acknowledged"
                    );
                }
                SessionEnd::Conflict { .. } => {
                    tracing::warn!(reason = %end, "write path: proposal conflicted; dump dropped, nothing acknowledged");
                }
                other => {
                    tracing::warn!(reason = %other, "write path: session ended; dump dropped");
                }
            }
            // Back off while the local MariaDB cannot be reached.
            let delay = self
                .cfg
                .retry_delay
                .saturating_mul(1 << failures.min(5))
                .min(MAX_RETRY_DELAY);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> SessionEnd {
        // Build on the store as the log has it: wait for the store's
        // deferred sync to show what was applied (the snapshot and the
        // reader trail it until then; bounded by the sync interval).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.progress.has_unsynced() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = shutdown.changed() => return SessionEnd::Shutdown,
            }
        }
        let snap = self.progress.snapshot();
        let connect_state = match &self.acked_upto {
            Some(p) => p.clone(),
            None if !self.rewind_tried => {
                self.rewind_tried = true;
                let reader = self.progress.reader().clone();
                tokio::task::spawn_blocking(move || rewound_position(&reader))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| snap.pos.clone())
            }
            None => snap.pos.clone(),
        };
        let mut cfg = self.cfg.semisync.clone();
        cfg.connect_state = connect_state.clone();
        tracing::info!(connect_state = %connect_state, store_pos = %snap.pos, "write path: master; connecting to the local MariaDB as a semi-sync replica");
        let client = tokio::select! {
            c = SemiSyncClient::connect(&cfg) => match c {
                Ok(c) => c,
                Err(e) => {
                    inc(&self.metrics.connect_failures);
                    return e.into();
                }
            },
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        };
        inc(&self.metrics.sessions_connected);
        self.metrics.active.store(1, Ordering::Relaxed);
        let (events, acker) = client.into_split();
        let mut reader = TransactionReader::new(events, connect_state);
        let (tx, mut rx) = mpsc::channel::<Result<ReplTransaction, SemiSyncError>>(4096);
        let _reader_task = AbortOnDrop(tokio::spawn(async move {
            loop {
                let r = reader.next_transaction().await;
                let stop = r.is_err();
                if tx.send(r).await.is_err() || stop {
                    return;
                }
            }
        }));
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        // Values submitted whose outcome is not seen yet, oldest first.
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        // The log's end once every value in flight is applied: what the
        // next value is built on.
        let mut tail = Tail {
            pos: snap.pos,
            checksum: snap.checksum,
        };
        // A transaction taken from the dump that did not fit the last batch.
        let mut carried: Option<ReplTransaction> = None;
        let max_value = self.max_value_bytes();
        let max_inflight = self.cfg.max_inflight.max(1);
        loop {
            // A transaction to split goes alone, after everything in flight.
            let next_is_large = carried
                .as_ref()
                .is_some_and(|t| t.transaction.size() > max_value);
            let may_take = if next_is_large {
                inflight.is_empty()
            } else {
                inflight.is_empty()
                    || (inflight.len() < max_inflight
                        && inflight.iter().map(|f| f.bytes).sum::<usize>()
                            < self.cfg.max_inflight_bytes)
            };
            let first = match carried.take() {
                Some(t) if may_take => t,
                held => {
                    carried = held;
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => return SessionEnd::Shutdown,
                        outcome = front_outcome(&mut inflight) => {
                            let Some(done) = inflight.pop_front() else { continue };
                            if let Err(end) = self.settle(done, outcome, &acker).await {
                                return end;
                            }
                            continue;
                        }
                        r = rx.recv(), if may_take && carried.is_none() => match r {
                            Some(Ok(t)) => t,
                            Some(Err(e)) => {
                                inc(&self.metrics.dump_errors);
                                return e.into();
                            }
                            None => return SessionEnd::ReaderGone,
                        },
                        _ = tick.tick() => {
                            if !self.may_write() {
                                return SessionEnd::LostLease;
                            }
                            continue;
                        }
                    }
                }
            };
            if first.transaction.size() > max_value && !inflight.is_empty() {
                carried = Some(first);
                continue;
            }
            // Whatever else is there, bounded. A transaction to split goes
            // alone.
            let mut batch = vec![first];
            let mut bytes = batch[0].transaction.size();
            let mut dump_error = None;
            while batch.len() < self.cfg.max_batch_transactions
                && bytes < self.cfg.max_batch_bytes
                && bytes <= max_value
            {
                match rx.try_recv() {
                    Ok(Ok(t)) => {
                        let size = t.transaction.size();
                        let checksum_differs =
                            t.transaction.checksum() != batch[0].transaction.checksum();
                        if checksum_differs
                            || size > max_value
                            || bytes + size > self.cfg.max_batch_bytes
                        {
                            carried = Some(t);
                            break;
                        }
                        bytes += size;
                        batch.push(t);
                    }
                    Ok(Err(e)) => {
                        dump_error = Some(e);
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Transactions the store already holds are chosen: ACK them.
            // They can only lead the stream (the session's start, after
            // values of an earlier session were chosen unseen), so nothing
            // of this session is in flight before them.
            if inflight.is_empty() {
                let known = batch
                    .iter()
                    .take_while(|t| self.progress.reader().find(&t.transaction.gtid()).is_some())
                    .count();
                if known > 0 {
                    if let Some(last) = batch.get(known - 1) {
                        if let Err(e) = acker.ack_position(&last.end).await {
                            return e.into();
                        }
                        inc(&self.metrics.acks_sent);
                    }
                    for t in batch.drain(..known) {
                        self.mark_acked(&t);
                        inc(&self.metrics.transactions_acked_known);
                    }
                    tracing::info!(
                        known,
                        "write path: acknowledged transactions already chosen"
                    );
                    // The store's position includes them: build on it.
                    let snap = self.progress.snapshot();
                    tail = Tail {
                        pos: snap.pos,
                        checksum: snap.checksum,
                    };
                }
            }
            if let [t] = batch.as_slice()
                && t.transaction.size() > max_value
            {
                // Alone, nothing in flight (checked above): in parts.
                let prev = (tail.pos.to_string(), tail.checksum);
                match self.propose_parts(t, &prev, max_value).await {
                    Ok((pos, checksum)) => {
                        if let Err(e) = acker.ack_position(&t.end).await {
                            return e.into();
                        }
                        inc(&self.metrics.acks_sent);
                        self.mark_acked(t);
                        inc(&self.metrics.transactions_acked);
                        let mut next = tail.clone();
                        if let Err(e) =
                            extend_tail(&mut next.pos, &mut next.checksum, &t.transaction)
                        {
                            return SessionEnd::Rejected(format!(
                                "transaction {} out of order: {e}",
                                t.transaction.gtid()
                            ));
                        }
                        if (next.pos.to_string(), next.checksum) != (pos.clone(), checksum) {
                            return SessionEnd::Diverged {
                                expected: next.pos.to_string(),
                                applied: pos,
                            };
                        }
                        tail = next;
                    }
                    Err(end) => return end,
                }
            } else if !batch.is_empty() {
                self.metrics
                    .inflight_at_submit
                    .fetch_add(inflight.len() as u64, Ordering::Relaxed);
                match self.submit_batch(batch, &tail).await {
                    Ok(f) => {
                        tail = f.expect.clone();
                        inflight.push_back(f);
                    }
                    Err(end) => return end,
                }
            }
            if let Some(e) = dump_error {
                // What was taken before the error is in flight; its outcome
                // is not waited for (the next session sees it in the store).
                inc(&self.metrics.dump_errors);
                return e.into();
            }
        }
    }

    /// Takes the outcome of the oldest value in flight: ACK it if it was
    /// applied where predicted, end the session otherwise.
    async fn settle(
        &mut self,
        done: InFlight,
        outcome: Result<(paxos::InstanceId, ApplyOutcome), paxos::ProposeFailed>,
        acker: &Acker,
    ) -> Result<(), SessionEnd> {
        match outcome {
            Ok((
                instance,
                ApplyOutcome::Applied {
                    pos,
                    checksum,
                    first_index,
                    count,
                },
            )) => {
                inc(&self.metrics.proposals_applied);
                tracing::debug!(instance, first_index, count, %pos, "write path: batch chosen");
                let Some(last) = done.batch.last() else {
                    return Ok(());
                };
                crash_point_before_ack(self.metrics.proposals_applied.load(Ordering::Relaxed));
                // Chosen and applied: acknowledge it (an ACK at a position
                // releases every commit waiting at or before it).
                acker.ack_position(&last.end).await?;
                inc(&self.metrics.acks_sent);
                self.metrics.inflight_micros.fetch_add(
                    done.submitted.elapsed().as_micros() as u64,
                    Ordering::Relaxed,
                );
                for t in &done.batch {
                    self.mark_acked(t);
                }
                self.metrics
                    .transactions_acked
                    .fetch_add(done.batch.len() as u64, Ordering::Relaxed);
                let expected = done.expect.pos.to_string();
                if pos != expected || checksum != done.expect.checksum {
                    // Every later value was built on the predicted end.
                    return Err(SessionEnd::Diverged {
                        expected,
                        applied: pos,
                    });
                }
                Ok(())
            }
            Ok((_, ApplyOutcome::Conflict { pos, checksum })) => {
                inc(&self.metrics.proposals_conflict);
                Err(SessionEnd::Conflict { pos, checksum })
            }
            Ok((_, ApplyOutcome::Rejected(reason))) => {
                inc(&self.metrics.proposals_rejected);
                Err(SessionEnd::Rejected(reason))
            }
            Ok((_, ApplyOutcome::PartHeld { gtid, parts })) => {
                inc(&self.metrics.proposals_rejected);
                Err(SessionEnd::Rejected(format!(
                    "a batch came back as part {parts} of {gtid} (bug)"
                )))
            }
            Err(e) => {
                inc(&self.metrics.proposals_failed);
                Err(e.into())
            }
        }
    }

    fn mark_acked(&mut self, t: &ReplTransaction) {
        let snap_pos = || self.progress.snapshot().pos;
        let pos = self.acked_upto.get_or_insert_with(snap_pos);
        pos.set(t.transaction.gtid());
    }

    /// The per-value limit in force.
    fn max_value_bytes(&self) -> usize {
        self.cfg.max_value_bytes.max(MIN_VALUE_BYTES)
    }

    /// Submits `batch` (whole transactions, each within the per-value
    /// limit) built on `tail`, without waiting for its outcome. Checks the
    /// lease first.
    async fn submit_batch(
        &self,
        batch: Vec<ReplTransaction>,
        tail: &Tail,
    ) -> Result<InFlight, SessionEnd> {
        let max_value = self.max_value_bytes();
        let mut expect = tail.clone();
        for t in &batch {
            if t.transaction.size() > max_value {
                return Err(SessionEnd::TooLarge {
                    gtid: t.transaction.gtid().to_string(),
                    len: t.transaction.size(),
                    max: max_value,
                });
            }
            if let Err(e) = extend_tail(&mut expect.pos, &mut expect.checksum, &t.transaction) {
                return Err(SessionEnd::Rejected(format!(
                    "transaction {} out of order: {e}",
                    t.transaction.gtid()
                )));
            }
        }
        if !self.may_write() {
            return Err(SessionEnd::LostLease);
        }
        let checksum = batch
            .first()
            .map(|t| BinlogValue::checksum_code(t.transaction.checksum()))
            .unwrap_or(1);
        let value = BinlogValue {
            prev: tail.pos.to_string(),
            prev_checksum: tail.checksum,
            checksum,
            transactions: batch
                .iter()
                .map(|t| serde_bytes::ByteBuf::from(t.transaction.bytes().to_vec()))
                .collect(),
        };
        let data = value.encode()?;
        drop(value);
        inc(&self.metrics.proposals);
        self.metrics
            .transactions_proposed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.metrics
            .bytes_proposed
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        match self.handle.submit(data).await {
            Ok(pending) => Ok(InFlight {
                pending,
                bytes: batch.iter().map(|t| t.transaction.size()).sum(),
                batch,
                expect,
                submitted: std::time::Instant::now(),
            }),
            Err(e) => {
                inc(&self.metrics.proposals_failed);
                Err(e.into())
            }
        }
    }

    /// Proposes one transaction in parts of at most `max_value` bytes, in
    /// order, each once the previous one is chosen and applied; returns the
    /// (position, checksum) after the last. Every part is built on `prev`
    /// (the position before the transaction) and on the running checksum
    /// of the parts before it. Checks the lease before each part; any other
    /// outcome than the expected one ends the session without an ACK.
    async fn propose_parts(
        &self,
        t: &ReplTransaction,
        prev: &(String, u32),
        max_value: usize,
    ) -> Result<(String, u32), SessionEnd> {
        let txn = &t.transaction;
        let gtid = txn.gtid();
        let bytes = txn.bytes();
        let checksum = BinlogValue::checksum_code(txn.checksum());
        let mut parts = PartValue::split(&prev.0, prev.1, gtid, checksum, bytes, max_value);
        let n_parts = parts.total();
        // Resume: the store holds our first parts (same GTID, position and cut).
        let snap = self.progress.snapshot();
        let mut resumed = 0;
        if let Some((g, held, chain)) = snap.pending_part
            && g == gtid
            && (held as usize) < n_parts
            && snap.pos.to_string() == prev.0
            && snap.checksum == prev.1
        {
            let mut probe = parts.clone();
            probe.skip_parts(held);
            if probe.running_chain() == chain {
                parts = probe;
                resumed = held;
            }
        }
        let started = std::time::Instant::now();
        tracing::info!(%gtid, len = bytes.len(), parts = n_parts, resumed, "write path: proposing a large transaction in parts");
        inc(&self.metrics.transactions_split);
        if resumed > 0 {
            inc(&self.metrics.transactions_resumed);
        }
        self.metrics
            .transactions_proposed
            .fetch_add(1, Ordering::Relaxed);
        for value in parts {
            if !self.may_write() {
                return Err(SessionEnd::LostLease);
            }
            let (index, last) = (value.index, value.last);
            let data = value.encode()?;
            drop(value);
            inc(&self.metrics.proposals);
            inc(&self.metrics.parts_proposed);
            self.metrics
                .bytes_proposed
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            let outcome = match self.handle.propose(data).await {
                Ok((_, o)) => o,
                Err(e) => {
                    inc(&self.metrics.proposals_failed);
                    return Err(e.into());
                }
            };
            match outcome {
                ApplyOutcome::PartHeld { parts, .. } if !last && parts == index + 1 => {
                    inc(&self.metrics.proposals_applied);
                }
                ApplyOutcome::Applied {
                    pos,
                    checksum,
                    first_index,
                    ..
                } if last => {
                    inc(&self.metrics.proposals_applied);
                    tracing::info!(%gtid, first_index, parts = n_parts, elapsed_ms = started.elapsed().as_millis() as u64, "write path: large transaction chosen");
                    return Ok((pos, checksum));
                }
                ApplyOutcome::Conflict { pos, checksum } => {
                    inc(&self.metrics.proposals_conflict);
                    return Err(SessionEnd::Conflict { pos, checksum });
                }
                ApplyOutcome::Rejected(reason) => {
                    inc(&self.metrics.proposals_rejected);
                    return Err(SessionEnd::Rejected(reason));
                }
                other => {
                    inc(&self.metrics.proposals_rejected);
                    return Err(SessionEnd::Rejected(format!(
                        "part {index} of {gtid} came back as {other:?} (bug)"
                    )));
                }
            }
        }
        Err(SessionEnd::Rejected(format!(
            "transaction {gtid} has no bytes"
        )))
    }
}
