//! [`BinlogStateMachine`]: the Paxos state machine of the binlog server.
//!
//! Each chosen application item is a [`BinlogValue`]; applying it is a
//! compare-and-set on the event store: the batch is appended only if the
//! store still ends at the value's `prev` GTID position with its
//! `prev_checksum` rolling checksum. Every instance is made durable
//! (`EventStore::sync`, one fsync) before `apply` returns, so
//! `checkpoint()` is always the next instance and the replication master
//! sees a transaction as soon as it is applied.
//!
//! Several items in one instance (the core may pack queued proposals
//! together) are checked in order, each against the state the earlier
//! accepted ones leave (the rolling checksum is chained with the store's
//! documented formula and checked against the store after the append).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use binlog::{GtidPos, Transaction};
use paxos::InstanceId;
use paxos::runtime::{CheckpointChunk, StateMachine};

use super::value::{ApplyOutcome, BinlogValue};
use crate::store::{EventStore, StoreError, StoreReader};

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
}

/// Shared view of the store: the progress and a reader of the durable log.
#[derive(Debug)]
pub struct Progress {
    state: Mutex<ProgressState>,
    reader: StoreReader,
}

impl Progress {
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
}

impl std::fmt::Debug for BinlogStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinlogStateMachine")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The rolling checksum after `txn` when the chain was `prev` (the store's
/// formula: crc32 over prev LE, domain LE, server LE, seq LE, events).
fn chain_after(prev: u32, txn: &Transaction) -> u32 {
    let g = txn.gtid();
    let mut h = crc32fast::Hasher::new();
    h.update(&prev.to_le_bytes());
    h.update(&g.domain.to_le_bytes());
    h.update(&g.server.to_le_bytes());
    h.update(&g.seq.to_le_bytes());
    h.update(txn.bytes());
    h.finalize()
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
        });
        let sm = BinlogStateMachine { store, progress };
        sm.publish(|_| {});
        sm
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
        f(&mut p);
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
        for item in items {
            let value = match BinlogValue::decode(item) {
                Ok(v) => v,
                Err(e) => {
                    decided.push(Err(ApplyOutcome::Rejected(format!(
                        "undecodable value: {e}"
                    ))));
                    continue;
                }
            };
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
                if let Err(e) = next_pos.advance(t.gtid()) {
                    order_error = Some(format!("transaction {} out of order: {e}", t.gtid()));
                    break;
                }
                next_chain = chain_after(next_chain, t);
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
        if txns.is_empty() {
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
        self.store.sync()?;
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
        self.publish(|p| {
            p.instances_applied += 1;
            p.transactions_appended += n_txns;
            for o in &outputs {
                match o {
                    ApplyOutcome::Applied { .. } => p.batches_applied += 1,
                    ApplyOutcome::Conflict { .. } => p.conflicts += 1,
                    ApplyOutcome::Rejected(_) => p.rejected += 1,
                }
            }
        });
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

    fn apply(&mut self, instance: InstanceId, items: Vec<Vec<u8>>) -> Vec<ApplyOutcome> {
        match self.try_apply(instance, &items) {
            Ok(out) => out,
            Err(e) => {
                // Returning the wrong number of outputs stops the node: the
                // store's state on disk is unknown after a write failure.
                tracing::error!(instance, error = %e, "event store failed; stopping the node");
                Vec::new()
            }
        }
    }

    fn checkpoint(&self) -> InstanceId {
        self.store.checkpoint()
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
    use crate::store::StoreOptions;
    use binlog::build::{self, EventSpec};
    use binlog::{Checksum, EventType, Gtid, GtidEvent, QueryEvent};

    fn synth(seq: u64) -> Transaction {
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
        let text = format!("INSERT INTO t VALUES ({seq})");
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

    fn open(dir: &std::path::Path) -> BinlogStateMachine {
        BinlogStateMachine::new(EventStore::open(dir, StoreOptions::default()).unwrap().0)
    }

    #[test]
    fn compare_and_set_extends_only_the_log_it_was_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let p = sm.progress();

        // Built on the empty log: applied.
        let out = sm.apply(0, vec![value("", 0, &[1, 2])]);
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
        let out = sm.apply(1, vec![value("", 0, &[3])]);
        assert!(
            matches!(&out[0], ApplyOutcome::Conflict { pos, .. } if pos == "0-7-2"),
            "{out:?}"
        );
        // Right position, wrong checksum: conflict too.
        let out = sm.apply(2, vec![value("0-7-2", checksum ^ 1, &[3])]);
        assert!(matches!(out[0], ApplyOutcome::Conflict { .. }), "{out:?}");
        assert_eq!(p.snapshot().end_index, 2);
        assert_eq!(p.snapshot().checkpoint, 3);
        assert_eq!(p.snapshot().conflicts, 2);

        // Two items in one instance: the second built on the first.
        let first = value("0-7-2", checksum, &[3]);
        let mut tmp = open_scratch_chain(checksum, 3);
        let second = value("0-7-3", tmp.remove(0), &[4, 5]);
        let stale = value("0-7-2", checksum, &[3]);
        let out = sm.apply(3, vec![first, second, stale, b"garbage".to_vec()]);
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
        let out = sm.apply(4, vec![value("0-7-5", s.checksum, &[5])]);
        assert!(matches!(out[0], ApplyOutcome::Rejected(_)), "{out:?}");

        // An empty instance moves the checkpoint.
        assert!(sm.apply(5, Vec::new()).is_empty());
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

    /// The chain after transaction `seq` on top of `prev`.
    fn open_scratch_chain(prev: u32, seq: u64) -> Vec<u32> {
        vec![chain_after(prev, &synth(seq))]
    }
}
