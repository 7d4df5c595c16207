//! The store's running state and how each DATA record moves it. The writer
//! and the replay (open, checkpoint install) share this code, so a log
//! replays into exactly the state that wrote it.

use binlog::{Checksum, Gtid, GtidPos};

use super::record::{self, BaseState, DataHeader, Record};

/// Where a complete transaction lives: `parts` records with consecutive keys
/// from `first_key` (parts of one transaction are never interleaved with
/// other records: anything else abandons a transaction in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxnLoc {
    /// Its log index.
    pub index: u64,
    pub gtid: Gtid,
    pub first_key: u64,
    pub parts: u32,
    /// Bytes of events (all parts).
    pub len: u64,
}

/// A transaction whose parts are arriving.
#[derive(Debug, Clone)]
pub(crate) struct Partial {
    pub gtid: Gtid,
    pub checksum: Checksum,
    pub first_key: u64,
    /// Parts held (the next expected part index).
    pub parts: u32,
    pub len: u64,
    /// Rolling checksum so far (previous value, GTID, bytes of the parts held).
    pub hasher: crc32fast::Hasher,
}

/// The log's running state.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    pub next_key: u64,
    pub next_txn: u64,
    pub pos: GtidPos,
    pub chain: u32,
    /// Every instance below this is applied.
    pub checkpoint: u64,
    pub partial: Option<Partial>,
}

/// Why a DATA record cannot follow the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApplyError {
    /// A GTID that does not move its domain forward.
    OutOfOrder {
        domain: u32,
        current: Gtid,
        new: Gtid,
    },
    /// A part that does not continue the transaction in progress.
    PartOutOfOrder {
        gtid: Gtid,
        part: u32,
        expected: String,
    },
    /// Anything else (key mismatch, checksum mismatch): only a damaged or
    /// foreign log gets here.
    Invalid(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::OutOfOrder {
                domain,
                current,
                new,
            } => write!(
                f,
                "transaction {new} does not follow {current} in domain {domain}"
            ),
            ApplyError::PartOutOfOrder {
                gtid,
                part,
                expected,
            } => write!(f, "part {part} of {gtid} is out of order: {expected}"),
            ApplyError::Invalid(s) => f.write_str(s),
        }
    }
}

/// What one DATA record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// A part was added to the transaction in progress.
    Part,
    /// A transaction is complete.
    Txn(TxnLoc),
    /// A later part of a transaction whose first parts were trimmed away
    /// (only at the start of a replay).
    Orphan,
    /// The last part of such a transaction: it completed, and is trimmed.
    Trimmed,
}

impl Cursor {
    pub fn from_base(b: &BaseState) -> Self {
        Cursor {
            next_key: b.next_key,
            next_txn: b.next_txn,
            pos: b.pos.clone(),
            chain: b.chain,
            checkpoint: b.checkpoint,
            partial: None,
        }
    }

    pub fn base(&self) -> BaseState {
        BaseState {
            next_key: self.next_key,
            next_txn: self.next_txn,
            checkpoint: self.checkpoint,
            chain: self.chain,
            pos: self.pos.clone(),
        }
    }

    /// Would `gtid` move its domain forward?
    pub fn check_order(&self, gtid: Gtid) -> Result<(), ApplyError> {
        match self.pos.get(gtid.domain) {
            Some(cur) if cur.seq >= gtid.seq => Err(ApplyError::OutOfOrder {
                domain: gtid.domain,
                current: cur,
                new: gtid,
            }),
            _ => Ok(()),
        }
    }

    /// Applies one DATA record with key `key`. On error nothing changed.
    /// Returns what it did and the rolling checksum after it (the writer
    /// stores it in the last part; the replay compares it with the stored
    /// one).
    pub fn apply(
        &mut self,
        key: u64,
        h: &DataHeader,
        bytes: &[u8],
        allow_orphan: bool,
    ) -> Result<(Applied, u32), ApplyError> {
        if key != self.next_key {
            return Err(ApplyError::Invalid(format!(
                "record key {key} where {} was expected",
                self.next_key
            )));
        }
        // Counters come from disk or a peer's image: never let them wrap.
        let (Some(next_key), Some(next_txn)) = (key.checked_add(1), self.next_txn.checked_add(1))
        else {
            return Err(ApplyError::Invalid("store counters exhausted".into()));
        };
        let mut partial = if h.part == 0 {
            // A new transaction: whatever was in progress is abandoned (the
            // chosen log moved on without completing it).
            self.check_order(h.gtid)?;
            Partial {
                gtid: h.gtid,
                checksum: h.checksum,
                first_key: key,
                parts: 0,
                len: 0,
                hasher: record::chain_start(self.chain, h.gtid),
            }
        } else {
            match &self.partial {
                Some(p) if p.gtid == h.gtid && p.parts == h.part && p.checksum == h.checksum => {
                    p.clone()
                }
                _ if allow_orphan && self.partial.is_none() => {
                    if h.last {
                        // The end of a transaction whose first parts were
                        // trimmed away (trimming removes whole segments, and
                        // one may end inside a transaction): it counts as
                        // trimmed. Its GTID and the checksum after it are in
                        // this record.
                        self.check_order(h.gtid)?;
                        self.pos.set(h.gtid);
                        self.chain = h.chain_after;
                        self.next_txn = next_txn;
                        self.next_key = next_key;
                        return Ok((Applied::Trimmed, self.chain));
                    }
                    self.next_key = next_key;
                    return Ok((Applied::Orphan, self.chain));
                }
                other => {
                    let expected = match other {
                        Some(p) => format!("{} has {} part(s) so far", p.gtid, p.parts),
                        None => "no transaction is in progress (part 0 starts one)".into(),
                    };
                    return Err(ApplyError::PartOutOfOrder {
                        gtid: h.gtid,
                        part: h.part,
                        expected,
                    });
                }
            }
        };
        partial.hasher.update(bytes);
        partial.parts = partial
            .parts
            .checked_add(1)
            .ok_or_else(|| ApplyError::Invalid(format!("too many parts for {}", h.gtid)))?;
        partial.len += bytes.len() as u64;
        self.next_key = next_key;
        if !h.last {
            self.partial = Some(partial);
            return Ok((Applied::Part, self.chain));
        }
        let chain = partial.hasher.clone().finalize();
        let loc = TxnLoc {
            index: self.next_txn,
            gtid: h.gtid,
            first_key: partial.first_key,
            parts: partial.parts,
            len: partial.len,
        };
        // Checked when the first part came; nothing completed in between.
        self.pos.set(h.gtid);
        self.chain = chain;
        self.next_txn = next_txn;
        self.partial = None;
        Ok((Applied::Txn(loc), chain))
    }
}

/// What a segment of the log holds, as far as trimming needs to know.
#[derive(Debug, Clone)]
pub(crate) struct SegInfo {
    /// The state at its start (its BASE record).
    pub base: BaseState,
    /// Highest key of any record in it (also of discarded ones): decides,
    /// exactly as the segment log does, whether it can be removed.
    pub max_key: Option<u64>,
}

/// The records of one Paxos instance being replayed: they count only once
/// the record that ends the instance is seen.
#[derive(Debug)]
struct Group {
    instance: u64,
    saved: Cursor,
    saved_head: Option<BaseState>,
    txns: usize,
    records: u64,
}

/// Replays a log's records into its state; see the module docs of
/// [`crate::store`] for the rules.
#[derive(Debug)]
pub(crate) struct Rebuild {
    pub cur: Option<Cursor>,
    /// The state before the first transaction held whole: where the log
    /// starts for readers (first index, trimmed position).
    pub head: Option<BaseState>,
    pub segs: Vec<SegInfo>,
    pub txns: Vec<TxnLoc>,
    group: Option<Group>,
    /// Orphan parts are possible only before the first transaction begins.
    orphans_allowed: bool,
    pub orphan_parts: u64,
    /// Records of instances cut short by a crash.
    pub discarded_records: u64,
    pub records: u64,
}

impl Rebuild {
    pub fn new() -> Self {
        Rebuild {
            cur: None,
            head: None,
            segs: Vec::new(),
            txns: Vec::new(),
            group: None,
            orphans_allowed: true,
            orphan_parts: 0,
            discarded_records: 0,
            records: 0,
        }
    }

    fn discard_group(&mut self) {
        if let Some(g) = self.group.take() {
            self.discarded_records += g.records;
            self.txns.truncate(g.txns);
            self.cur = Some(g.saved);
            self.head = g.saved_head;
        }
    }

    /// Feeds the next record of the log (key, payload).
    pub fn feed(&mut self, key: Option<u64>, payload: &[u8]) -> Result<(), String> {
        self.records += 1;
        let rec = record::decode(payload)?;
        match (rec, key) {
            (Record::Base(b), None) => {
                // A segment starts. After a crash, it follows the records of
                // an instance that never ended: they do not count.
                self.discard_group();
                if let Some(cur) = &mut self.cur {
                    let mine = cur.base();
                    if b.next_key != mine.next_key
                        || b.next_txn != mine.next_txn
                        || b.chain != mine.chain
                        || b.pos != mine.pos
                        || b.checkpoint < mine.checkpoint
                    {
                        return Err(format!(
                            "BASE record {b:?} disagrees with the log before it {mine:?}"
                        ));
                    }
                    cur.checkpoint = b.checkpoint;
                } else {
                    self.cur = Some(Cursor::from_base(&b));
                    self.head = Some(b.clone());
                }
                self.segs.push(SegInfo {
                    base: b,
                    max_key: None,
                });
                Ok(())
            }
            (Record::Progress(c), None) => {
                if self.group.is_some() {
                    return Err("PROGRESS record inside an instance".into());
                }
                let cur = self
                    .cur
                    .as_mut()
                    .ok_or("log does not start with a BASE record")?;
                if c < cur.checkpoint {
                    return Err(format!(
                        "PROGRESS to {c} goes back from checkpoint {}",
                        cur.checkpoint
                    ));
                }
                cur.checkpoint = c;
                Ok(())
            }
            (Record::Data(h, bytes), Some(key)) => {
                let Some(cur) = self.cur.as_mut() else {
                    return Err("log does not start with a BASE record".into());
                };
                if let Some(seg) = self.segs.last_mut() {
                    seg.max_key = Some(seg.max_key.map_or(key, |m| m.max(key)));
                }
                match &mut self.group {
                    Some(g) if g.instance != h.instance => {
                        return Err(format!(
                            "record of instance {} inside instance {}",
                            h.instance, g.instance
                        ));
                    }
                    Some(g) => g.records += 1,
                    None => {
                        if h.instance < cur.checkpoint {
                            return Err(format!(
                                "record of instance {} below checkpoint {}",
                                h.instance, cur.checkpoint
                            ));
                        }
                        self.group = Some(Group {
                            instance: h.instance,
                            saved: cur.clone(),
                            saved_head: self.head.clone(),
                            txns: self.txns.len(),
                            records: 1,
                        });
                    }
                }
                let (applied, chain) = cur
                    .apply(key, &h, bytes, self.orphans_allowed)
                    .map_err(|e| e.to_string())?;
                match applied {
                    Applied::Orphan => self.orphan_parts += 1,
                    Applied::Trimmed => {
                        self.orphan_parts += 1;
                        self.head = Some(cur.base());
                    }
                    Applied::Part => self.orphans_allowed = false,
                    Applied::Txn(loc) => {
                        self.orphans_allowed = false;
                        if chain != h.chain_after {
                            return Err(format!(
                                "rolling checksum after {} is {chain:#010x}, the record says {:#010x}",
                                h.gtid, h.chain_after
                            ));
                        }
                        self.txns.push(loc);
                    }
                }
                if h.ends_instance {
                    self.group = None;
                    cur.checkpoint = h
                        .instance
                        .checked_add(1)
                        .ok_or("instance numbers exhausted")?;
                }
                Ok(())
            }
            (Record::Data(..), None) => Err("DATA record without a key".into()),
            (_, Some(k)) => Err(format!("BASE or PROGRESS record with key {k}")),
        }
    }

    /// The end of the log: an instance still open was cut by a crash.
    pub fn finish(&mut self) -> Result<Cursor, String> {
        self.discard_group();
        self.cur
            .clone()
            .ok_or_else(|| "log has no BASE record".to_string())
    }

    /// True while the records of an instance are open.
    pub fn in_group(&self) -> bool {
        self.group.is_some()
    }
}
