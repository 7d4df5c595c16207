//! [`BinlogStateMachine`]: the Paxos state machine of the binlog server.
//!
//! Each chosen application item is a [`BinlogValue`]; applying it is a
//! compare-and-set on the event store: the batch is appended only if the
//! store still ends at the value's `prev` GTID position with its
//! `prev_checksum` rolling checksum. `apply` only buffers; the runtime's
//! `sync` (after every `Ready`, once its outputs are handed out) makes all
//! of it durable with one fsync (`EventStore::sync`) and only then shows it
//! to readers (the replication master) and the progress view. An output may
//! thus be acted on (the write path ACKs) before the store's fsync: the
//! instance is already chosen, durable in a majority's Paxos logs, and a
//! crash before the store's fsync replays it from `checkpoint()`.
//!
//! Several items in one instance (the core may pack queued proposals
//! together) are checked in order, each against the state the earlier
//! accepted ones leave (the rolling checksum is chained with the store's
//! documented formula and checked against the store after the append).
//!
//! # Large transactions
//!
//! A transaction larger than one value comes as [`PartValue`]s 0..n, each
//! chosen in its own instance (the write path proposes them one after the
//! other). The compare-and-set extends to parts: every part carries the
//! position and rolling checksum before the transaction (which parts do not
//! move until the last one completes it), and a part `k > 0` is stored only
//! if the store's unfinished transaction is this GTID with exactly `k`
//! parts held whose running checksum is the part's `part_chain`. Anything
//! else is a `Conflict` and nothing is stored. Part 0 needs only the
//! position and checksum to hold: it starts the transaction afresh,
//! abandoning whatever unfinished parts the store holds (the store's rule).
//! An interrupted transaction (lost lease, crash, new master) is sent whole
//! again by the next session's dump; the write path then either continues
//! with the remaining parts, when the store's unfinished parts are a prefix
//! of this very transaction cut the same way, or starts it again at part 0
//! (the parts chosen before were never visible to readers and stay
//! abandoned). Both are safe: the checks above make a part extend only the
//! exact bytes it was cut after.
//!
//! A part is alone in its instance (the store's rule): in an instance the
//! core packed with several items, a part after an accepted item, and any
//! item after an accepted part, is refused as a `Conflict`. A part that is
//! not the last yields [`ApplyOutcome::PartHeld`]; the last one `Applied`
//! (one transaction), which is when the write path may ACK.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use binlog::{GtidPos, Transaction};
use paxos::InstanceId;
use paxos::runtime::{ApplyError, CheckpointChunk, StateMachine};

use super::value::{ApplyOutcome, PartValue, Value};
use crate::store::{EventStore, PartOutcome, StoreError, StoreReader, TxnPart};

/// The store's state as the rest of the server sees it (published by the
/// state machine after every applied instance).
#[derive(Debug, Clone, Default)]
pub struct ProgressState {
    /// The last GTID of each domain (durable).
    pub pos: GtidPos,
    /// The rolling checksum after the last transaction.
    pub checksum: u32,
    /// Every instance below this is applied and durable.
    pub checkpoint: InstanceId,
    /// Index the next transaction will get.
    pub end_index: u64,
    /// Instances applied by this process.
    pub instances_applied: u64,
    /// Batches that extended the log.
    pub batches_applied: u64,
    /// Transactions appended.
    pub transactions_appended: u64,
    /// Batches refused by the compare-and-set.
    pub conflicts: u64,
    /// Items that were not valid batches.
    pub rejected: u64,
    /// Parts of large transactions stored (the last ones included).
    pub parts_applied: u64,
    /// The transaction whose parts are arriving: its GTID, the parts held
    /// and their running checksum (`EventStore::pending_chain`).
    pub pending_part: Option<(binlog::Gtid, u32, u32)>,
}

/// Shared view of the store: the progress and a reader of the durable log.
#[derive(Debug)]
pub struct Progress {
    state: Mutex<ProgressState>,
    reader: StoreReader,
    /// Instances were applied that the store has not made durable (and
    /// shown to readers and to [`Progress::snapshot`]) yet.
    unsynced: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// True while applied instances wait for the store's next sync (at most
    /// the sync interval plus a tick): until then the snapshot and the
    /// reader trail what is chosen and applied.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A snapshot of the progress.
    pub fn snapshot(&self) -> ProgressState {
        self.lock().clone()
    }

    /// A reader of the store's durable transactions.
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    fn lock(&self) -> MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The Paxos state machine over the [`EventStore`].
pub struct BinlogStateMachine {
    store: EventStore,
    progress: Arc<Progress>,
    /// Counts of instances applied since the last sync (published with it).
    unsynced: AppliedCounts,
    /// Longest time applied instances wait for the store's fsync.
    sync_interval: std::time::Duration,
    last_sync: std::time::Instant,
    /// Set by the agent: may this node campaign for the lease now? (`None`:
    /// always.)
    campaign_gate: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Default of [`BinlogStateMachine::set_sync_interval`].
pub const DEFAULT_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// What applied instances add to the [`ProgressState`] counters.
#[derive(Debug, Default)]
struct AppliedCounts {
    instances: u64,
    transactions: u64,
    parts: u64,
    batches: u64,
    conflicts: u64,
    rejected: u64,
}

impl std::fmt::Debug for BinlogStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinlogStateMachine")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The rolling checksum after `txn` when the chain was `prev` (the store's
/// own formula, so the compare-and-set and the store always agree).
fn chain_after(prev: u32, txn: &Transaction) -> u32 {
    let mut h = crate::store::chain_start(prev, txn.gtid());
    h.update(txn.bytes());
    h.finalize()
}

/// Moves the log's (position, rolling checksum) over `txn`, as appending it
/// does: the compare-and-set's arithmetic, shared with the write path (which
/// builds each value in flight on the predicted end of the ones before it).
/// Fails, changing nothing, if `txn`'s GTID does not move its domain forward.
pub(crate) fn extend_tail(
    pos: &mut GtidPos,
    chain: &mut u32,
    txn: &Transaction,
) -> Result<(), binlog::Error> {
    pos.advance(txn.gtid())?;
    *chain = chain_after(*chain, txn);
    Ok(())
}

/// The checksum setting of a wire code (0 = NONE, else CRC32).
fn checksum_alg(code: u8) -> binlog::Checksum {
    if code == 0 {
        binlog::Checksum::None
    } else {
        binlog::Checksum::Crc32
    }
}

/// Whether a store error means the store can no longer be trusted (I/O),
/// as opposed to a refused batch.
fn is_fatal(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::OutOfOrder { .. }
            | StoreError::PartOutOfOrder { .. }
            | StoreError::TooLarge { .. }
            | StoreError::Binlog(_)
    )
}

impl BinlogStateMachine {
    /// Wraps an opened store.
    pub fn new(store: EventStore) -> Self {
        let progress = Arc::new(Progress {
            state: Mutex::new(ProgressState::default()),
            reader: store.reader(),
            unsynced: std::sync::atomic::AtomicBool::new(false),
        });
        let sm = BinlogStateMachine {
            store,
            progress,
            unsynced: AppliedCounts::default(),
            sync_interval: DEFAULT_SYNC_INTERVAL,
            last_sync: std::time::Instant::now(),
            campaign_gate: None,
        };
        sm.publish(|_| {});
        sm
    }

    /// How long applied instances may wait for the store's fsync (one
    /// fsync per interval at most, instead of one per Paxos value; zero:
    /// after every `Ready`). Chosen instances are durable in the Paxos log
    /// meanwhile; what the interval delays is their visibility to the
    /// local replica and the log's compaction.
    pub fn set_sync_interval(&mut self, interval: std::time::Duration) {
        self.sync_interval = interval;
    }

    /// Campaign for (and renew) the lease only while `gate` is set (the
    /// agent's verdict: local MariaDB up and caught up with the chosen log).
    pub fn set_campaign_gate(&mut self, gate: Arc<std::sync::atomic::AtomicBool>) {
        self.campaign_gate = Some(gate);
    }

    /// The shared progress view.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    fn publish(&self, f: impl FnOnce(&mut ProgressState)) {
        let mut p = self.progress.lock();
        p.pos = self.store.last_pos().clone();
        p.checksum = self.store.rolling_checksum();
        p.checkpoint = self.store.checkpoint();
        p.end_index = self.store.end_index();
        p.pending_part = self
            .store
            .pending_part()
            .zip(self.store.pending_chain())
            .map(|((g, n), c)| (g, n, c));
        f(&mut p);
    }

    /// The compare-and-set of a part against the log (`pos`, `chain`) and
    /// the store's unfinished transaction: `None` if it may be stored, or
    /// the outcome refusing it. `taken`: something was already accepted in
    /// this instance (a part must be alone in its instance).
    fn check_part(
        &self,
        p: &PartValue,
        pos: &GtidPos,
        chain: u32,
        taken: bool,
    ) -> Option<ApplyOutcome> {
        let conflict = || ApplyOutcome::Conflict {
            pos: pos.to_string(),
            checksum: chain,
        };
        if taken || p.prev != pos.to_string() || p.prev_checksum != chain {
            return Some(conflict());
        }
        if p.index > 0 {
            // It must continue the unfinished transaction exactly: same
            // GTID, the next part index, and the bytes held so far are the
            // ones this part was cut after.
            let continues = self.store.pending_part() == Some((p.gtid(), p.index))
                && self.store.pending_chain() == Some(p.part_chain);
            if !continues {
                return Some(conflict());
            }
        }
        None
    }

    /// Applies one instance; `Err` only for a store failure (fatal).
    fn try_apply(
        &mut self,
        instance: InstanceId,
        items: &[Vec<u8>],
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        let mut pos = self.store.last_pos().clone();
        let mut chain = self.store.rolling_checksum();
        let first_index = self.store.end_index();
        let mut txns: Vec<Transaction> = Vec::new();
        // Per item: Some(range in txns) if accepted, or the outcome.
        let mut decided: Vec<Result<(usize, usize, String, u32), ApplyOutcome>> = Vec::new();
        // The part accepted in this instance (its slot in `decided`).
        let mut part: Option<(usize, PartValue)> = None;
        for item in items {
            let value = match Value::decode(item) {
                Ok(Value::Batch(v)) => v,
                Ok(Value::Part(p)) => {
                    let outcome =
                        self.check_part(&p, &pos, chain, !txns.is_empty() || part.is_some());
                    match outcome {
                        Some(o) => decided.push(Err(o)),
                        None => {
                            part = Some((decided.len(), p));
                            // Placeholder, replaced once the store took it.
                            decided.push(Err(ApplyOutcome::Rejected(String::new())));
                        }
                    }
                    continue;
                }
                Err(e) => {
                    decided.push(Err(ApplyOutcome::Rejected(format!(
                        "undecodable value: {e}"
                    ))));
                    continue;
                }
            };
            if part.is_some() {
                // A part is alone in its instance (the store's rule): what
                // comes after it in the same instance is refused as if the
                // log had moved.
                decided.push(Err(ApplyOutcome::Conflict {
                    pos: pos.to_string(),
                    checksum: chain,
                }));
                continue;
            }
            if value.prev != pos.to_string() || value.prev_checksum != chain {
                decided.push(Err(ApplyOutcome::Conflict {
                    pos: pos.to_string(),
                    checksum: chain,
                }));
                continue;
            }
            let alg = value.checksum_alg();
            let mut mine = Vec::with_capacity(value.transactions.len());
            let mut bad = None;
            for raw in &value.transactions {
                match Transaction::from_bytes(raw, alg) {
                    Ok(t) => mine.push(t),
                    Err(e) => {
                        bad = Some(format!("malformed transaction: {e}"));
                        break;
                    }
                }
            }
            if let Some(reason) = bad {
                decided.push(Err(ApplyOutcome::Rejected(reason)));
                continue;
            }
            let mut next_pos = pos.clone();
            let mut next_chain = chain;
            let mut order_error = None;
            for t in &mine {
                if let Err(e) = extend_tail(&mut next_pos, &mut next_chain, t) {
                    order_error = Some(format!("transaction {} out of order: {e}", t.gtid()));
                    break;
                }
            }
            if let Some(reason) = order_error {
                decided.push(Err(ApplyOutcome::Rejected(reason)));
                continue;
            }
            let start = txns.len();
            txns.extend(mine);
            pos = next_pos;
            chain = next_chain;
            decided.push(Ok((start, txns.len(), pos.to_string(), chain)));
        }

        let mut appended = true;
        let mut parts_stored = 0;
        if let Some((slot, p)) = part {
            let outcome = match self.store.append_part(
                instance,
                TxnPart {
                    gtid: p.gtid(),
                    index: p.index,
                    last: p.last,
                    checksum: checksum_alg(p.checksum),
                    bytes: &p.bytes,
                },
            ) {
                Ok(PartOutcome::Pending { parts }) => {
                    parts_stored = 1;
                    ApplyOutcome::PartHeld {
                        gtid: p.gtid().to_string(),
                        parts,
                    }
                }
                Ok(PartOutcome::Complete { index }) => {
                    parts_stored = 1;
                    ApplyOutcome::Applied {
                        first_index: index,
                        count: 1,
                        pos: self.store.last_pos().to_string(),
                        checksum: self.store.rolling_checksum(),
                    }
                }
                Err(e) if !is_fatal(&e) => {
                    tracing::warn!(instance, error = %e, "event store refused a part");
                    self.store.mark_applied(instance)?;
                    ApplyOutcome::Rejected(format!("event store refused: {e}"))
                }
                Err(e) => return Err(e),
            };
            if let Some(d) = decided.get_mut(slot) {
                *d = Err(outcome);
            }
        } else if txns.is_empty() {
            self.store.mark_applied(instance)?;
        } else {
            match self.store.append(instance, &txns) {
                Ok(range) => {
                    if range.start != first_index {
                        tracing::error!(
                            instance,
                            start = range.start,
                            expected = first_index,
                            "event store index moved unexpectedly"
                        );
                    }
                    if self.store.rolling_checksum() != chain {
                        tracing::error!(
                            instance,
                            store = self.store.rolling_checksum(),
                            computed = chain,
                            "rolling checksum differs from the store's (bug)"
                        );
                    }
                }
                Err(e) if !is_fatal(&e) => {
                    tracing::warn!(instance, error = %e, "event store refused a batch");
                    appended = false;
                    self.store.mark_applied(instance)?;
                    for d in &mut decided {
                        if d.is_ok() {
                            *d = Err(ApplyOutcome::Rejected(format!("event store refused: {e}")));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let outputs: Vec<ApplyOutcome> = decided
            .into_iter()
            .map(|d| match d {
                Ok((start, end, pos, checksum)) => ApplyOutcome::Applied {
                    first_index: first_index + start as u64,
                    count: (end - start) as u64,
                    pos,
                    checksum,
                },
                Err(o) => o,
            })
            .collect();
        let n_txns = if appended { txns.len() as u64 } else { 0 };
        let completed = outputs
            .iter()
            .any(|o| matches!(o, ApplyOutcome::Applied { .. }));
        let n_txns = if parts_stored > 0 && completed {
            1
        } else {
            n_txns
        };
        self.progress
            .unsynced
            .store(true, std::sync::atomic::Ordering::Release);
        let c = &mut self.unsynced;
        c.instances += 1;
        c.transactions += n_txns;
        c.parts += parts_stored;
        for o in &outputs {
            match o {
                ApplyOutcome::Applied { .. } => c.batches += 1,
                ApplyOutcome::PartHeld { .. } => {}
                ApplyOutcome::Conflict { .. } => c.conflicts += 1,
                ApplyOutcome::Rejected(_) => c.rejected += 1,
            }
        }
        for o in &outputs {
            match o {
                ApplyOutcome::Applied {
                    first_index,
                    count,
                    pos,
                    ..
                } => {
                    tracing::debug!(instance, first_index, count, %pos, "applied batch")
                }
                ApplyOutcome::PartHeld { gtid, parts } => {
                    tracing::debug!(instance, %gtid, parts, "applied part of a large transaction")
                }
                ApplyOutcome::Conflict { pos, .. } => {
                    tracing::info!(instance, %pos, "batch refused: the log moved on (conflict)")
                }
                ApplyOutcome::Rejected(reason) => {
                    tracing::warn!(instance, %reason, "batch rejected")
                }
            }
        }
        Ok(outputs)
    }
}

impl StateMachine for BinlogStateMachine {
    type Output = ApplyOutcome;

    fn may_campaign(&self) -> bool {
        self.campaign_gate
            .as_ref()
            .is_none_or(|g| g.load(std::sync::atomic::Ordering::Acquire))
    }

    /// A store error stops the node (the driver logs it, and the process
    /// exits with it): the store's state on disk is unknown after a failed
    /// write, and a restart recovers it and replays from `checkpoint()`.
    fn apply(
        &mut self,
        instance: InstanceId,
        items: Vec<Vec<u8>>,
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        Ok(self.try_apply(instance, &items)?)
    }

    fn checkpoint(&self) -> InstanceId {
        self.store.checkpoint()
    }

    /// One fsync for every instance applied since the last one, once the
    /// sync interval has passed; only then do readers (the replication
    /// master) and the progress view see them.
    fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced.instances == 0 || self.last_sync.elapsed() < self.sync_interval {
            return Ok(());
        }
        self.last_sync = std::time::Instant::now();
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "event store sync failed; stopping the node");
            return Err(std::io::Error::from(e));
        }
        let c = std::mem::take(&mut self.unsynced);
        self.publish(|p| {
            p.instances_applied += c.instances;
            p.transactions_appended += c.transactions;
            p.parts_applied += c.parts;
            p.batches_applied += c.batches;
            p.conflicts += c.conflicts;
            p.rejected += c.rejected;
        });
        self.progress
            .unsynced
            .store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn read_checkpoint(&mut self, offset: u64, max: usize) -> std::io::Result<CheckpointChunk> {
        self.store
            .read_checkpoint(offset, max)
            .map_err(std::io::Error::from)
    }

    fn write_checkpoint(
        &mut self,
        checkpoint: InstanceId,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> std::io::Result<()> {
        self.store
            .write_checkpoint(checkpoint, offset, data, done)
            .map_err(std::io::Error::from)?;
        if done {
            self.publish(|_| {});
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::server::value::BinlogValue;
    use crate::store::StoreOptions;
    use binlog::build::{self, EventSpec};
    use binlog::{Checksum, EventType, Gtid, GtidEvent, QueryEvent};

    /// Applies one instance and syncs, as the runtime does.
    fn apply(sm: &mut BinlogStateMachine, i: InstanceId, items: Vec<Vec<u8>>) -> Vec<ApplyOutcome> {
        let out = StateMachine::apply(sm, i, items).unwrap();
        StateMachine::sync(sm).unwrap();
        out
    }

    fn synth(seq: u64) -> Transaction {
        synth_query(seq, &format!("INSERT INTO t VALUES ({seq})"))
    }

    /// A transaction of one QUERY statement `text`, GTID 0-7-`seq`.
    fn synth_query(seq: u64, text: &str) -> Transaction {
        let spec = EventSpec {
            timestamp: 1,
            event_type: EventType::UNKNOWN,
            server_id: 7,
            log_pos: 0,
            flags: 0,
        };
        let c = Checksum::Crc32;
        let mut bytes =
            build::gtid_event(&spec, &GtidEvent::new(Gtid::new(0, 7, seq), 0), c).unwrap();
        let q = QueryEvent {
            thread_id: 1,
            exec_time: 0,
            error_code: 0,
            status_vars: &[],
            db: b"d",
            query: text.as_bytes(),
        };
        bytes.extend(build::query_event(&spec, &q, c).unwrap());
        bytes.extend(build::xid_event(&spec, seq, c).unwrap());
        Transaction::from_bytes(&bytes, c).unwrap()
    }

    fn value(prev: &str, prev_checksum: u32, seqs: &[u64]) -> Vec<u8> {
        BinlogValue {
            prev: prev.into(),
            prev_checksum,
            checksum: 1,
            transactions: seqs
                .iter()
                .map(|s| serde_bytes::ByteBuf::from(synth(*s).bytes().to_vec()))
                .collect(),
        }
        .encode()
        .unwrap()
    }

    /// A state machine that syncs at every `sync` call (as after every
    /// `Ready` with a zero interval).
    fn open(dir: &std::path::Path) -> BinlogStateMachine {
        let mut sm =
            BinlogStateMachine::new(EventStore::open(dir, StoreOptions::default()).unwrap().0);
        sm.set_sync_interval(std::time::Duration::ZERO);
        sm
    }

    #[test]
    fn compare_and_set_extends_only_the_log_it_was_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let p = sm.progress();

        // Built on the empty log: applied.
        let out = apply(&mut sm, 0, vec![value("", 0, &[1, 2])]);
        let ApplyOutcome::Applied {
            first_index,
            count,
            pos,
            checksum,
        } = out[0].clone()
        else {
            panic!("{out:?}");
        };
        assert_eq!((first_index, count, pos.as_str()), (0, 2, "0-7-2"));
        let snap = p.snapshot();
        assert_eq!(snap.pos.to_string(), "0-7-2");
        assert_eq!(snap.checksum, checksum, "computed chain = the store's");
        assert_eq!(snap.checkpoint, 1);
        assert_eq!(p.reader().end_index(), 2, "durable and visible to readers");

        // A stale batch (built on the empty log again): conflict, nothing stored.
        let out = apply(&mut sm, 1, vec![value("", 0, &[3])]);
        assert!(
            matches!(&out[0], ApplyOutcome::Conflict { pos, .. } if pos == "0-7-2"),
            "{out:?}"
        );
        // Right position, wrong checksum: conflict too.
        let out = apply(&mut sm, 2, vec![value("0-7-2", checksum ^ 1, &[3])]);
        assert!(matches!(out[0], ApplyOutcome::Conflict { .. }), "{out:?}");
        assert_eq!(p.snapshot().end_index, 2);
        assert_eq!(p.snapshot().checkpoint, 3);
        assert_eq!(p.snapshot().conflicts, 2);

        // Two items in one instance: the second built on the first.
        let first = value("0-7-2", checksum, &[3]);
        let mut tmp = open_scratch_chain(checksum, 3);
        let second = value("0-7-3", tmp.remove(0), &[4, 5]);
        let stale = value("0-7-2", checksum, &[3]);
        let out = apply(&mut sm, 3, vec![first, second, stale, b"garbage".to_vec()]);
        assert!(
            matches!(
                out[0],
                ApplyOutcome::Applied {
                    first_index: 2,
                    count: 1,
                    ..
                }
            ),
            "{out:?}"
        );
        assert!(
            matches!(
                out[1],
                ApplyOutcome::Applied {
                    first_index: 3,
                    count: 2,
                    ..
                }
            ),
            "{out:?}"
        );
        assert!(matches!(out[2], ApplyOutcome::Conflict { .. }), "{out:?}");
        assert!(matches!(out[3], ApplyOutcome::Rejected(_)), "{out:?}");
        assert_eq!(p.snapshot().pos.to_string(), "0-7-5");

        // Out of GTID order (seq 5 again) on the right position: rejected.
        let s = p.snapshot();
        let out = apply(&mut sm, 4, vec![value("0-7-5", s.checksum, &[5])]);
        assert!(matches!(out[0], ApplyOutcome::Rejected(_)), "{out:?}");

        // An empty instance moves the checkpoint.
        assert!(apply(&mut sm, 5, Vec::new()).is_empty());
        assert_eq!(sm.checkpoint(), 6);

        // Durable: a reopened store has it all.
        let before = p.snapshot();
        drop(sm);
        let sm = open(dir.path());
        let after = sm.progress().snapshot();
        assert_eq!(after.pos, before.pos);
        assert_eq!(after.checksum, before.checksum);
        assert_eq!(after.checkpoint, 6);
        assert_eq!(after.end_index, 5);
    }

    /// A transaction with a query of about `len` bytes.
    fn synth_big(seq: u64, len: usize) -> Transaction {
        synth_query(
            seq,
            &format!("INSERT INTO t VALUES ('{}')", "x".repeat(len)),
        )
    }

    /// The encoded parts of `t` built on (`prev`, `prev_checksum`).
    fn parts(prev: &str, prev_checksum: u32, t: &Transaction, max: usize) -> Vec<Vec<u8>> {
        PartValue::split(prev, prev_checksum, t.gtid(), 1, t.bytes(), max)
            .map(|p| p.encode().unwrap())
            .collect()
    }

    fn held(out: &[ApplyOutcome], n: u32) -> bool {
        matches!(out, [ApplyOutcome::PartHeld { parts, .. }] if *parts == n)
    }

    fn conflict(out: &[ApplyOutcome]) -> bool {
        matches!(out, [ApplyOutcome::Conflict { .. }])
    }

    #[test]
    fn parts_extend_the_log_in_order_and_only_on_the_pending_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let p = sm.progress();
        let out = apply(&mut sm, 0, vec![value("", 0, &[1])]);
        let ApplyOutcome::Applied { checksum: c1, .. } = out[0] else {
            panic!("{out:?}");
        };

        // In order: held, invisible, then complete as one transaction.
        let big = synth_big(2, 10_000);
        let ps = parts("0-7-1", c1, &big, 4096);
        assert_eq!(ps.len(), 3);
        assert!(held(&apply(&mut sm, 1, vec![ps[0].clone()]), 1));
        // Out of order: part 2 where part 1 is expected, part 1 again
        // after it is stored, part 0's bytes as part 1: refused.
        assert!(conflict(&apply(&mut sm, 2, vec![ps[2].clone()])));
        assert!(held(&apply(&mut sm, 3, vec![ps[1].clone()]), 2));
        let (g, n, chain) = p.snapshot().pending_part.unwrap();
        assert_eq!((g, n), (big.gtid(), 2), "published for the write path");
        let mut rest = PartValue::split("0-7-1", c1, big.gtid(), 1, big.bytes(), 4096);
        rest.skip_parts(2);
        assert_eq!(
            rest.running_chain(),
            chain,
            "what a resuming write path compares"
        );
        assert!(conflict(&apply(&mut sm, 4, vec![ps[1].clone()])));
        assert_eq!(p.reader().end_index(), 1, "parts are invisible to readers");
        assert_eq!(p.snapshot().pos.to_string(), "0-7-1");
        assert_eq!(
            p.snapshot().checksum,
            c1,
            "the chain waits for the last part"
        );
        let out = apply(&mut sm, 5, vec![ps[2].clone()]);
        let [
            ApplyOutcome::Applied {
                first_index: 1,
                count: 1,
                pos,
                checksum: c2,
            },
        ] = &out[..]
        else {
            panic!("{out:?}");
        };
        assert_eq!(pos, "0-7-2");
        assert_eq!(
            *c2,
            chain_after(c1, &big),
            "same chain as the whole transaction"
        );
        assert_eq!(p.reader().end_index(), 2);
        let read = p.reader().read_from_blocking(1, 1).unwrap();
        assert_eq!(read[0].transaction.bytes(), big.bytes(), "readable whole");
        let c2 = *c2;

        // Stale prev: part 0 or a later part built on the old position.
        let big3 = synth_big(3, 10_000);
        let stale = parts("0-7-1", c1, &big3, 4096);
        assert!(conflict(&apply(&mut sm, 6, vec![stale[0].clone()])));
        let ps3 = parts("0-7-2", c2, &big3, 4096);
        assert!(held(&apply(&mut sm, 7, vec![ps3[0].clone()]), 1));
        assert!(conflict(&apply(&mut sm, 8, vec![stale[1].clone()])));
        // Right index, but not the bytes held (another cut): refused.
        let other_cut = parts("0-7-2", c2, &big3, 5000);
        assert!(conflict(&apply(&mut sm, 9, vec![other_cut[1].clone()])));
        // A part must be alone in its instance: packed after a batch, or a
        // batch packed after it, it is refused (a conflict).
        let out = apply(&mut sm, 10, vec![ps3[1].clone(), value("0-7-2", c2, &[3])]);
        assert!(
            matches!(
                &out[..],
                [
                    ApplyOutcome::PartHeld { parts: 2, .. },
                    ApplyOutcome::Conflict { .. }
                ]
            ),
            "{out:?}"
        );

        // Interleaving: a whole transaction on the same position abandons
        // the unfinished parts, whose next part then conflicts.
        let out = apply(&mut sm, 11, vec![value("0-7-2", c2, &[3])]);
        let [ApplyOutcome::Applied { checksum: c3, .. }] = out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(sm.store.pending_part(), None);
        assert!(conflict(&apply(&mut sm, 12, vec![ps3[2].clone()])));
        assert_eq!(p.snapshot().pos.to_string(), "0-7-3");
        assert_eq!(p.reader().end_index(), 3);

        // A restarted attempt: part 0 again abandons the earlier parts.
        let big4 = synth_big(4, 10_000);
        let ps4 = parts("0-7-3", c3, &big4, 4096);
        let out = apply(&mut sm, 13, vec![value("0-7-3", c3, &[4]), ps4[0].clone()]);
        assert!(
            matches!(
                &out[..],
                [ApplyOutcome::Applied { .. }, ApplyOutcome::Conflict { .. }]
            ),
            "{out:?}"
        );
        let s = p.snapshot();
        let big5 = synth_big(5, 10_000);
        let ps5 = parts(&s.pos.to_string(), s.checksum, &big5, 4096);
        assert!(held(&apply(&mut sm, 14, vec![ps5[0].clone()]), 1));
        assert!(held(&apply(&mut sm, 15, vec![ps5[1].clone()]), 2));
        assert!(
            held(&apply(&mut sm, 16, vec![ps5[0].clone()]), 1),
            "restarted"
        );
        assert!(held(&apply(&mut sm, 17, vec![ps5[1].clone()]), 2));

        // Durable: after a reopen the held parts are still pending and the
        // last one completes the transaction.
        drop(sm);
        let mut sm = open(dir.path());
        let p = sm.progress();
        assert_eq!(sm.store.pending_part(), Some((Gtid::new(0, 7, 5), 2)));
        let out = apply(&mut sm, 18, vec![ps5[2].clone()]);
        assert!(
            matches!(
                &out[..],
                [ApplyOutcome::Applied {
                    first_index: 4,
                    count: 1,
                    ..
                }]
            ),
            "{out:?}"
        );
        let s = p.snapshot();
        assert_eq!(s.pos.to_string(), "0-7-5");
        assert_eq!(s.checksum, chain_after(chain_after(c3, &synth(4)), &big5));
        assert_eq!(s.parts_applied, 1);
        let read = p.reader().read_from_blocking(4, 1).unwrap();
        assert_eq!(read[0].transaction.bytes(), big5.bytes());
    }

    /// The chain after transaction `seq` on top of `prev`.
    fn open_scratch_chain(prev: u32, seq: u64) -> Vec<u32> {
        vec![chain_after(prev, &synth(seq))]
    }
}
