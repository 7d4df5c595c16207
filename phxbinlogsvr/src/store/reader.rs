//! The read side: the durable transactions, indexed by log index and GTID,
//! shared by every [`StoreReader`] (the replication master's
//! [`TransactionSource`]).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use binlog::{Checksum, Gtid, GtidPos, Transaction};
use paxos::storage::LogReader;
use tokio::sync::watch;

use super::StoreError;
use super::record::{self, Record};
use super::state::TxnLoc;
use crate::master::source::{LogIndex, SourceEntry, SourceError, TransactionSource, plan_start};

/// What readers see: only transactions made durable by `EventStore::sync`.
#[derive(Debug)]
pub(crate) struct Index {
    pub first: u64,
    pub txns: VecDeque<TxnLoc>,
    pub trimmed: GtidPos,
    pub last: GtidPos,
    /// Per domain: seq_no -> (server, log index). With gtid_strict_mode,
    /// seq_nos grow with the log index within a domain.
    pub domains: BTreeMap<u32, BTreeMap<u64, (u32, u64)>>,
    /// Reads the records of the current generation.
    pub log: LogReader,
}

impl Index {
    pub fn new(log: LogReader, first: u64, trimmed: GtidPos) -> Self {
        Index {
            first,
            txns: VecDeque::new(),
            last: trimmed.clone(),
            trimmed,
            domains: BTreeMap::new(),
            log,
        }
    }

    pub fn end(&self) -> u64 {
        self.first + self.txns.len() as u64
    }

    pub fn push(&mut self, t: TxnLoc) {
        self.domains
            .entry(t.gtid.domain)
            .or_default()
            .insert(t.gtid.seq, (t.gtid.server, t.index));
        self.last.set(t.gtid);
        self.txns.push_back(t);
    }

    /// Forgets every transaction below `first`; `trimmed` is the position
    /// before it.
    pub fn trim_to(&mut self, first: u64, trimmed: GtidPos) {
        while self.first < first {
            if self.txns.pop_front().is_none() {
                break;
            }
            self.first += 1;
        }
        self.first = self.first.max(first);
        for map in self.domains.values_mut() {
            while let Some(e) = map.first_entry() {
                if e.get().1 >= self.first {
                    break;
                }
                e.remove();
            }
        }
        self.domains.retain(|_, m| !m.is_empty());
        self.trimmed = trimmed;
    }

    pub fn get(&self, index: u64) -> Option<&TxnLoc> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.txns.get(i)
    }

    pub fn find_gtid(&self, g: &Gtid) -> Option<u64> {
        self.domains
            .get(&g.domain)?
            .get(&g.seq)
            .filter(|(server, _)| *server == g.server)
            .map(|(_, i)| *i)
    }

    /// Index of the first held transaction that `applied` does not contain
    /// (the end when it contains them all).
    pub fn first_not_in(&self, applied: &GtidPos) -> u64 {
        let mut first = self.end();
        for (domain, map) in &self.domains {
            let next = match applied.get(*domain) {
                Some(g) => map
                    .range((std::ops::Bound::Excluded(g.seq), std::ops::Bound::Unbounded))
                    .next(),
                None => map.iter().next(),
            };
            if let Some((_, (_, i))) = next {
                first = first.min(*i);
            }
        }
        first
    }
}

impl LogIndex for Index {
    fn first_index(&self) -> u64 {
        self.first
    }
    fn end_index(&self) -> u64 {
        self.end()
    }
    fn trimmed(&self) -> &GtidPos {
        &self.trimmed
    }
    fn last(&self) -> &GtidPos {
        &self.last
    }
    fn find(&self, gtid: &Gtid) -> Option<u64> {
        self.find_gtid(gtid)
    }
    fn first_in_domain(&self, domain: u32) -> Option<u64> {
        self.domains
            .get(&domain)?
            .first_key_value()
            .map(|(_, (_, i))| *i)
    }
}

/// State shared by the writer and the readers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub index: Mutex<Index>,
    /// The durable end of the log (next index), for waiting dumps.
    pub end_tx: watch::Sender<u64>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Index> {
        // Every critical section leaves the index consistent (pushes and
        // trims are single steps), so a poisoned lock still holds a usable
        // index.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Read access to the store's durable transactions: cheap to clone, `Send +
/// Sync`; the [`TransactionSource`] the replication master streams from.
/// It only ever sees transactions that [`super::EventStore::sync`] made
/// durable, and only whole ones.
#[derive(Debug, Clone)]
pub struct StoreReader {
    pub(crate) shared: Arc<Shared>,
}

/// Reads the records of `locs` from the log and rebuilds the transactions.
fn read_txns(log: &LogReader, locs: &[TxnLoc]) -> Result<Vec<SourceEntry>, ReadFailure> {
    let mut out = Vec::with_capacity(locs.len());
    for loc in locs {
        let mut bytes = Vec::new();
        let mut checksum = Checksum::Crc32;
        for part in 0..loc.parts {
            let key = loc.first_key + u64::from(part);
            let payload = log
                .read(key)
                .map_err(|e| ReadFailure::Store(StoreError::Storage(e)))?
                .ok_or(ReadFailure::Gone(loc.index))?;
            let bad = |reason: String| {
                ReadFailure::Store(StoreError::Corrupt {
                    path: Default::default(),
                    reason: format!("record {key} of transaction {}: {reason}", loc.gtid),
                })
            };
            let (h, data) = match record::decode(&payload).map_err(bad)? {
                Record::Data(h, data) => (h, data),
                other => return Err(bad(format!("not a DATA record: {other:?}"))),
            };
            if h.gtid != loc.gtid || h.part != part || h.last != (part + 1 == loc.parts) {
                return Err(bad(format!(
                    "holds part {} of {} (last: {})",
                    h.part, h.gtid, h.last
                )));
            }
            checksum = h.checksum;
            if loc.parts == 1 {
                bytes = data.to_vec();
            } else {
                if part == 0 {
                    bytes.reserve_exact(usize::try_from(loc.len).unwrap_or(0));
                }
                bytes.extend_from_slice(data);
            }
        }
        let txn = Transaction::from_bytes(&bytes, checksum)
            .map_err(|e| ReadFailure::Store(StoreError::Binlog(e)))?;
        out.push(SourceEntry {
            index: loc.index,
            transaction: Arc::new(txn),
        });
    }
    Ok(out)
}

#[derive(Debug)]
enum ReadFailure {
    /// The records of this index were trimmed while being read.
    Gone(u64),
    Store(StoreError),
}

impl StoreReader {
    /// First index held.
    pub fn first_index(&self) -> u64 {
        self.shared.lock().first
    }

    /// One past the last durable index.
    pub fn end_index(&self) -> u64 {
        self.shared.lock().end()
    }

    /// The last durable GTID of each domain.
    pub fn gtid_pos(&self) -> GtidPos {
        self.shared.lock().last.clone()
    }

    /// The last trimmed GTID of each domain.
    pub fn trimmed_pos(&self) -> GtidPos {
        self.shared.lock().trimmed.clone()
    }

    /// Index of the durable transaction with exactly this GTID.
    pub fn find(&self, gtid: &Gtid) -> Option<u64> {
        self.shared.lock().find_gtid(gtid)
    }

    /// What to read for `read_from` (under the lock; the disk reads happen
    /// after it is released).
    fn plan(&self, from: u64, max_bytes: usize) -> Result<(LogReader, Vec<TxnLoc>), SourceError> {
        let idx = self.shared.lock();
        if from < idx.first {
            return Err(SourceError::IndexTrimmed {
                index: from,
                first: idx.first,
            });
        }
        let mut locs = Vec::new();
        let mut bytes = 0u64;
        let mut i = from;
        while let Some(t) = idx.get(i) {
            if !locs.is_empty() && bytes.saturating_add(t.len) > max_bytes as u64 {
                break;
            }
            bytes = bytes.saturating_add(t.len);
            locs.push(*t);
            i += 1;
        }
        Ok((idx.log.clone(), locs))
    }

    fn failure(&self, f: ReadFailure) -> SourceError {
        match f {
            ReadFailure::Gone(index) => SourceError::IndexTrimmed {
                index,
                first: self.first_index(),
            },
            ReadFailure::Store(StoreError::Binlog(e)) => SourceError::Binlog(e),
            ReadFailure::Store(e) => SourceError::Storage(e.to_string()),
        }
    }

    /// [`TransactionSource::read_from`] without a runtime: reads on the
    /// calling thread.
    pub fn read_from_blocking(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<SourceEntry>, SourceError> {
        let (log, locs) = self.plan(from, max_bytes)?;
        read_txns(&log, &locs).map_err(|f| self.failure(f))
    }
}

impl TransactionSource for StoreReader {
    fn start_after(&self, state: &GtidPos, strict: bool) -> Result<u64, SourceError> {
        plan_start(&*self.shared.lock(), state, strict)
    }

    fn read_from(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<SourceEntry>, SourceError>> + Send {
        let planned = self.plan(from, max_bytes);
        let this = self.clone();
        async move {
            let (log, locs) = planned?;
            if locs.is_empty() {
                return Ok(Vec::new());
            }
            // Disk reads (up to a whole large transaction) block: keep them
            // off the runtime's worker threads when there is a runtime.
            let result = match tokio::runtime::Handle::try_current() {
                Ok(rt) => rt
                    .spawn_blocking(move || read_txns(&log, &locs))
                    .await
                    .map_err(|e| SourceError::Storage(format!("read task failed: {e}")))?,
                Err(_) => read_txns(&log, &locs),
            };
            result.map_err(|f| this.failure(f))
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.end_tx.subscribe()
    }
}
