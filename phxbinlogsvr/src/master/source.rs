//! Where the replication master reads transactions from.
//!
//! The log is a sequence of complete transactions (MariaDB event groups) in
//! the order they were chosen, each with a log index (0, 1, 2, ... with no
//! gaps; the front may have been trimmed). [`TransactionSource`] is what the
//! event store implements; [`MemorySource`] is an in-memory one for tests
//! and tools.
//!
//! # Where a replica starts
//!
//! A MariaDB replica connects with `@slave_connect_state`: one GTID per
//! replication domain, the last transaction it has in that domain.
//! [`plan_start`] turns it into the log index where its dump starts, with
//! MariaDB's per-domain rules (sql_repl.cc, `check_slave_start_position`):
//!
//! * a domain in the connect state whose GTID the log holds: the replica
//!   needs what follows it;
//! * a GTID the log held but trimmed (at or below the trimmed boundary of its
//!   domain, other than the boundary itself): [`SourceError::Trimmed`];
//! * a GTID the log never had: with `gtid_strict_mode` (what the project
//!   runs) [`SourceError::NotInLog`] (the replica diverged: it has a
//!   transaction the log does not, or it is ahead of the log); without
//!   strict mode the domain is positioned by sequence number alone, as
//!   MariaDB does;
//! * a domain the log has but the connect state does not: the replica needs
//!   the whole domain, so nothing of it may have been trimmed
//!   ([`SourceError::Trimmed`] otherwise).
//!
//! The dump then reads from that index on and skips each transaction the
//! connect state already contains (same domain, sequence number at or
//! below the state's: [`GtidPos::contains`]), exactly as a MariaDB master
//! skips the event groups a replica already has in each domain.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use binlog::{Checksum, Gtid, GtidPos, Transaction};
use tokio::sync::watch;

/// Why a source cannot serve a replica. The master turns every one into an
/// ERR 1236 packet with this text (MariaDB shows it in the replica's
/// `Last_IO_Error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The replica needs transactions the log no longer holds.
    #[error(
        "Could not find GTID state requested by the replica in the binlog server's log: \
         {requested}; the log was trimmed up to {trimmed_to} (the transactions after the \
         replica's position in domain {domain} are gone). Rebuild the replica from a peer."
    )]
    Trimmed {
        /// The domain.
        domain: u32,
        /// What the replica asked for: its GTID in that domain, or a note
        /// that it has none (it needs the whole domain).
        requested: String,
        /// The last trimmed GTID of that domain.
        trimmed_to: Gtid,
    },

    /// The replica's GTID is not in the log and the log cannot place it
    /// (strict mode): the replica diverged or is ahead of the log.
    #[error(
        "Error: connecting replica requested to start from GTID {requested}, which is not in \
         the binlog server's log ({detail}). The replica has probably diverged: it holds a \
         transaction the chosen log does not have."
    )]
    NotInLog {
        /// The replica's GTID.
        requested: Gtid,
        /// What the log has in that domain.
        detail: String,
    },

    /// The log index asked for was trimmed while the replica was reading.
    #[error(
        "the binlog server's log was trimmed past index {index} (first held: {first}) while \
         the replica was reading it"
    )]
    IndexTrimmed {
        /// The index asked for.
        index: u64,
        /// The first index still held.
        first: u64,
    },

    /// A transaction does not move its domain forward (strict GTID order).
    #[error("transaction {new} does not follow {current} in domain {domain}")]
    OutOfOrder {
        /// The domain.
        domain: u32,
        /// The log's last GTID in that domain.
        current: Gtid,
        /// The rejected GTID.
        new: Gtid,
    },

    /// Stored bytes are not a transaction (or another binlog-level error).
    #[error("bad stored transaction: {0}")]
    Binlog(#[from] binlog::Error),

    /// The storage behind the source failed.
    #[error("storage error: {0}")]
    Storage(String),
}

/// One transaction of the log with its index.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// Its log index.
    pub index: u64,
    /// The complete event group, as the origin master wrote it.
    pub transaction: Arc<Transaction>,
}

/// A log of transactions the master can serve.
///
/// Implementations must be cheap to query under their own lock:
/// [`TransactionSource::start_after`] is called once per dump,
/// [`TransactionSource::read_from`] in a loop while the replica is
/// connected, [`TransactionSource::subscribe`] once per dump.
pub trait TransactionSource: Send + Sync + 'static {
    /// The log index where a replica with connect state `state` starts
    /// reading (see the module docs; [`plan_start`] does the work over a
    /// [`LogIndex`] view taken under the source's lock). `strict` is the
    /// replica's `@slave_gtid_strict_mode`.
    fn start_after(&self, state: &GtidPos, strict: bool) -> Result<u64, SourceError>;

    /// Transactions from index `from` on, in log order: as many as fit in
    /// `max_bytes` but at least one if the log has any at `from`; empty when
    /// `from` is the end of the log. [`SourceError::IndexTrimmed`] if `from`
    /// is below the first held index.
    fn read_from(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<SourceEntry>, SourceError>> + Send;

    /// A receiver whose value is the end of the log (the next index to be
    /// appended); it changes whenever transactions are appended.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

/// What [`plan_start`] needs to know about a log, read consistently (under
/// the source's lock).
pub trait LogIndex {
    /// First index held.
    fn first_index(&self) -> u64;
    /// One past the last index held.
    fn end_index(&self) -> u64;
    /// Per domain, the last GTID trimmed from the front of the log (the
    /// position before [`LogIndex::first_index`]).
    fn trimmed(&self) -> &GtidPos;
    /// Per domain, the last GTID of the whole log (trimmed part included).
    fn last(&self) -> &GtidPos;
    /// Index of the held transaction with exactly this GTID.
    fn find(&self, gtid: &Gtid) -> Option<u64>;
    /// Index of the first held transaction of `domain`.
    fn first_in_domain(&self, domain: u32) -> Option<u64>;
}

/// The log index where a replica with connect state `state` starts, or why
/// it cannot be served (module docs). The dump skips, from there on, every
/// transaction `state` already contains.
pub fn plan_start<L: LogIndex + ?Sized>(
    log: &L,
    state: &GtidPos,
    strict: bool,
) -> Result<u64, SourceError> {
    let end = log.end_index();
    let mut start = end;
    // Domains the replica names.
    for g in state.iter() {
        let candidate = if let Some(i) = log.find(&g) {
            i.saturating_add(1)
        } else if let Some(t) = log.trimmed().get(g.domain)
            && g.seq <= t.seq
        {
            if g == t {
                // Exactly at the trimmed boundary: everything held in this
                // domain is new to the replica.
                log.first_in_domain(g.domain).unwrap_or(end)
            } else if g.seq < t.seq {
                return Err(SourceError::Trimmed {
                    domain: g.domain,
                    requested: g.to_string(),
                    trimmed_to: t,
                });
            } else if strict {
                // Same seq_no as the boundary, another server: not ours.
                return Err(SourceError::NotInLog {
                    requested: g,
                    detail: format!("the log has {t} at that sequence number"),
                });
            } else {
                log.first_in_domain(g.domain).unwrap_or(end)
            }
        } else {
            match log.last().get(g.domain) {
                None if strict => {
                    return Err(SourceError::NotInLog {
                        requested: g,
                        detail: format!("the log has no transaction in domain {}", g.domain),
                    });
                }
                // Non-strict: a domain the log never had is nothing to send.
                None => end,
                Some(last) if strict => {
                    let detail = if g.seq > last.seq {
                        format!(
                            "the replica is ahead of the log, whose last GTID in domain {} is {last}",
                            g.domain
                        )
                    } else {
                        format!(
                            "the log's last GTID in domain {} is {last} and it holds other GTIDs with higher sequence numbers",
                            g.domain
                        )
                    };
                    return Err(SourceError::NotInLog {
                        requested: g,
                        detail,
                    });
                }
                // Non-strict: positioned by seq_no; the filter skips the rest.
                Some(last) if g.seq >= last.seq => end,
                Some(_) => log.first_in_domain(g.domain).unwrap_or(end),
            }
        };
        start = start.min(candidate);
    }
    // Domains the log has and the replica does not name: from their start.
    for last in log.last().iter() {
        if state.get(last.domain).is_some() {
            continue;
        }
        if let Some(t) = log.trimmed().get(last.domain) {
            return Err(SourceError::Trimmed {
                domain: last.domain,
                requested: format!(
                    "no GTID in domain {} (it needs the whole domain)",
                    last.domain
                ),
                trimmed_to: t,
            });
        }
        if let Some(i) = log.first_in_domain(last.domain) {
            start = start.min(i);
        }
    }
    Ok(start.max(log.first_index()))
}

/// An in-memory [`TransactionSource`]: tests, tools, a cache in front of the
/// event store. Appends wake every dump waiting for new transactions.
#[derive(Debug)]
pub struct MemorySource {
    inner: Mutex<Memory>,
    end_tx: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Memory {
    first: u64,
    txns: VecDeque<Arc<Transaction>>,
    trimmed: GtidPos,
    last: GtidPos,
    by_gtid: HashMap<Gtid, u64>,
    /// First held index of each domain (recomputed on trim).
    domain_first: HashMap<u32, u64>,
    bytes: usize,
}

impl Memory {
    fn end(&self) -> u64 {
        self.first + self.txns.len() as u64
    }
}

impl LogIndex for Memory {
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
        self.by_gtid.get(gtid).copied()
    }
    fn first_in_domain(&self, domain: u32) -> Option<u64> {
        self.domain_first.get(&domain).copied()
    }
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource {
    /// An empty log starting at index 0.
    pub fn new() -> Self {
        Self::starting_after(GtidPos::new(), 0)
    }

    /// An empty log whose history before `first_index` is `trimmed` (e.g. a
    /// node that installed a checkpoint): replicas must be at or past that
    /// position in every domain it names.
    pub fn starting_after(trimmed: GtidPos, first_index: u64) -> Self {
        let (end_tx, _) = watch::channel(first_index);
        MemorySource {
            inner: Mutex::new(Memory {
                first: first_index,
                last: trimmed.clone(),
                trimmed,
                ..Memory::default()
            }),
            end_tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // A panic while holding the lock cannot leave Memory half-updated in
        // a way that matters more than losing the source: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a transaction; returns its index. Fails (appending nothing)
    /// if its GTID does not move its domain forward.
    pub fn append(&self, txn: Transaction) -> Result<u64, SourceError> {
        self.append_all([txn]).map(|r| r.start)
    }

    /// Appends a transaction given as its raw events (one complete group,
    /// e.g. read back from storage).
    pub fn append_bytes(&self, bytes: &[u8], checksum: Checksum) -> Result<u64, SourceError> {
        self.append(Transaction::from_bytes(bytes, checksum)?)
    }

    /// Appends several transactions at once (one wake-up for the dumps);
    /// returns their index range. All or nothing.
    pub fn append_all<I: IntoIterator<Item = Transaction>>(
        &self,
        txns: I,
    ) -> Result<std::ops::Range<u64>, SourceError> {
        let txns: Vec<Transaction> = txns.into_iter().collect();
        let mut m = self.lock();
        // Check the order first so that a failure appends nothing.
        let mut last = m.last.clone();
        for t in &txns {
            let g = t.gtid();
            last.advance(g).map_err(|_| SourceError::OutOfOrder {
                domain: g.domain,
                current: last.get(g.domain).unwrap_or(g),
                new: g,
            })?;
        }
        let start = m.end();
        for t in txns {
            let g = t.gtid();
            let index = m.end();
            m.bytes += t.size();
            m.by_gtid.insert(g, index);
            m.domain_first.entry(g.domain).or_insert(index);
            m.txns.push_back(Arc::new(t));
        }
        m.last = last;
        let end = m.end();
        drop(m);
        self.end_tx.send_replace(end);
        Ok(start..end)
    }

    /// Drops every transaction below index `index` (as a store trims its
    /// oldest files); returns how many were dropped.
    pub fn trim_before(&self, index: u64) -> usize {
        let mut m = self.lock();
        let mut dropped = 0;
        while m.first < index {
            let Some(t) = m.txns.pop_front() else { break };
            let g = t.gtid();
            m.by_gtid.remove(&g);
            m.trimmed.set(g);
            m.bytes -= t.size();
            m.first += 1;
            dropped += 1;
        }
        if dropped > 0 {
            let first = m.first;
            let mut domain_first = HashMap::new();
            for (i, t) in m.txns.iter().enumerate() {
                domain_first
                    .entry(t.gtid().domain)
                    .or_insert(first + i as u64);
            }
            m.domain_first = domain_first;
        }
        dropped
    }

    /// Drops every transaction up to and including `gtid`; `false` if the
    /// log does not hold it.
    pub fn trim_through(&self, gtid: &Gtid) -> bool {
        let index = self.lock().by_gtid.get(gtid).copied();
        match index {
            Some(i) => {
                self.trim_before(i + 1);
                true
            }
            None => false,
        }
    }

    /// First index held.
    pub fn first_index(&self) -> u64 {
        self.lock().first
    }

    /// One past the last index held.
    pub fn end_index(&self) -> u64 {
        self.lock().end()
    }

    /// Number of transactions held.
    pub fn len(&self) -> usize {
        self.lock().txns.len()
    }

    /// True when no transaction is held.
    pub fn is_empty(&self) -> bool {
        self.lock().txns.is_empty()
    }

    /// Bytes of the transactions held.
    pub fn size_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The last GTID of each domain (the log's `gtid_binlog_pos`).
    pub fn gtid_pos(&self) -> GtidPos {
        self.lock().last.clone()
    }

    /// The last trimmed GTID of each domain.
    pub fn trimmed_pos(&self) -> GtidPos {
        self.lock().trimmed.clone()
    }
}

impl TransactionSource for MemorySource {
    fn start_after(&self, state: &GtidPos, strict: bool) -> Result<u64, SourceError> {
        plan_start(&*self.lock(), state, strict)
    }

    fn read_from(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<SourceEntry>, SourceError>> + Send {
        let result = (|| {
            let m = self.lock();
            if from < m.first {
                return Err(SourceError::IndexTrimmed {
                    index: from,
                    first: m.first,
                });
            }
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let skip = usize::try_from(from - m.first).unwrap_or(usize::MAX);
            for (i, t) in m.txns.iter().enumerate().skip(skip) {
                if !out.is_empty() && bytes.saturating_add(t.size()) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(t.size());
                out.push(SourceEntry {
                    index: m.first + i as u64,
                    transaction: Arc::clone(t),
                });
            }
            Ok(out)
        })();
        std::future::ready(result)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use binlog::build::{self, EventSpec};
    use binlog::{EventType, GtidEvent};

    /// A minimal real-looking transaction: GTID, QUERY "COMMIT"... here a
    /// GTID + XID pair (a normal group ending at XID).
    pub(crate) fn txn(domain: u32, server: u32, seq: u64) -> Transaction {
        let spec = EventSpec {
            timestamp: 1,
            event_type: EventType::UNKNOWN,
            server_id: server,
            log_pos: 0,
            flags: 0,
        };
        let mut bytes = build::gtid_event(
            &spec,
            &GtidEvent::new(Gtid::new(domain, server, seq), 0),
            Checksum::Crc32,
        )
        .unwrap();
        bytes.extend(build::xid_event(&spec, seq, Checksum::Crc32).unwrap());
        Transaction::from_bytes(&bytes, Checksum::Crc32).unwrap()
    }

    fn pos(s: &str) -> GtidPos {
        s.parse().unwrap()
    }

    fn source(gtids: &[(u32, u32, u64)]) -> MemorySource {
        let s = MemorySource::new();
        for &(d, sv, q) in gtids {
            s.append(txn(d, sv, q)).unwrap();
        }
        s
    }

    #[test]
    fn start_positions() {
        // 0: 0-1-1, 1: 0-1-2, 2: 1-1-1, 3: 0-1-3, 4: 1-1-2
        let s = source(&[(0, 1, 1), (0, 1, 2), (1, 1, 1), (0, 1, 3), (1, 1, 2)]);
        assert_eq!(s.start_after(&pos(""), true).unwrap(), 0);
        assert_eq!(s.start_after(&pos("0-1-2,1-1-1"), true).unwrap(), 2);
        // The earliest of the domains' starts; the dump skips 1-1-2.
        assert_eq!(s.start_after(&pos("0-1-3,1-1-2"), true).unwrap(), 4);
        assert_eq!(s.start_after(&pos("0-1-3,1-1-1"), true).unwrap(), 3);
        // Domain 1 missing from the state: from its first transaction.
        assert_eq!(s.start_after(&pos("0-1-3"), true).unwrap(), 2);
        // Diverged: same seq, other server; ahead; unknown domain.
        for bad in ["0-2-2,1-1-2", "0-1-9,1-1-2", "0-1-3,1-1-2,5-1-1"] {
            assert!(
                matches!(
                    s.start_after(&pos(bad), true),
                    Err(SourceError::NotInLog { .. })
                ),
                "{bad}"
            );
        }
        // Non-strict: by seq_no.
        assert_eq!(s.start_after(&pos("0-1-9,1-1-2"), false).unwrap(), 5);
        assert_eq!(s.start_after(&pos("0-2-2,1-1-2"), false).unwrap(), 0);
        assert_eq!(s.start_after(&pos("0-1-3,1-1-2,5-1-1"), false).unwrap(), 4);
    }

    #[test]
    fn trimmed_log() {
        let s = source(&[(0, 1, 1), (0, 1, 2), (1, 1, 1), (0, 1, 3), (1, 1, 2)]);
        assert!(s.trim_through(&Gtid::new(0, 1, 2)));
        assert_eq!(s.first_index(), 2);
        assert_eq!(s.len(), 3);
        // Exactly at the boundary: fine.
        assert_eq!(s.start_after(&pos("0-1-2,1-1-1"), true).unwrap(), 3);
        assert_eq!(s.start_after(&pos("0-1-2"), true).unwrap(), 2);
        // Below it: trimmed, naming the replica's GTID.
        let err = s.start_after(&pos("0-1-1,1-1-1"), true).unwrap_err();
        assert!(matches!(err, SourceError::Trimmed { domain: 0, .. }));
        assert!(err.to_string().contains("0-1-1"), "{err}");
        // Domain 0 missing: it would need the trimmed part.
        assert!(matches!(
            s.start_after(&pos("1-1-1"), true),
            Err(SourceError::Trimmed { domain: 0, .. })
        ));
        // Reading below the first index.
        let r = futures_ready(s.read_from(0, 1 << 20));
        assert!(matches!(r, Err(SourceError::IndexTrimmed { .. })));
        let r = futures_ready(s.read_from(2, 1)).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].transaction.gtid(), Gtid::new(1, 1, 1));
        let r = futures_ready(s.read_from(2, 1 << 20)).unwrap();
        assert_eq!(r.len(), 3);
        assert!(futures_ready(s.read_from(5, 1 << 20)).unwrap().is_empty());
    }

    #[test]
    fn order_is_enforced_and_appends_wake() {
        let s = source(&[(0, 1, 5)]);
        let mut rx = s.subscribe();
        assert_eq!(*rx.borrow_and_update(), 1);
        assert!(matches!(
            s.append(txn(0, 2, 5)),
            Err(SourceError::OutOfOrder { .. })
        ));
        assert!(s.append_all([txn(0, 1, 6), txn(0, 1, 6)]).is_err());
        assert_eq!(s.len(), 1);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(s.append_all([txn(0, 1, 6), txn(0, 2, 7)]).unwrap(), 1..3);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
        assert_eq!(s.gtid_pos(), pos("0-2-7"));
    }

    #[test]
    fn starting_after_a_checkpoint() {
        let s = MemorySource::starting_after(pos("0-1-10"), 100);
        assert_eq!(s.start_after(&pos("0-1-10"), true).unwrap(), 100);
        assert!(s.start_after(&pos(""), true).is_err());
        assert!(s.start_after(&pos("0-1-9"), true).is_err());
        s.append(txn(0, 1, 11)).unwrap();
        assert_eq!(s.start_after(&pos("0-1-10"), true).unwrap(), 100);
        assert_eq!(s.start_after(&pos("0-1-11"), true).unwrap(), 101);
    }

    fn futures_ready<T>(f: impl Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(f)
    }
}
