//! [`EventStore`]: the writer (one per node, owned by the Paxos state
//! machine's thread).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use binlog::{Checksum, Event, Gtid, GtidPos, Transaction};
use paxos::runtime::CheckpointChunk;
use paxos::storage::{LogOptions, RECORD_OVERHEAD_BYTES, SEGMENT_HEADER_BYTES, SegmentLog};
use tokio::sync::watch;

use super::StoreError;
use super::image::{CheckpointReader, CheckpointWriter, Identity};
use super::layout;
use super::reader::{Index, Shared, StoreReader};
use super::record::{self, BaseState, DATA_HEADER_LEN, DataHeader};
use super::state::{Applied, ApplyError, Cursor, Rebuild, SegInfo, TxnLoc};

/// Tuning of an [`EventStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A new segment is started (at an instance boundary) once the active
    /// one would grow past this. Trimming removes whole segments, so this is
    /// also the granularity of retention.
    pub segment_bytes: u64,
    /// Largest record: a transaction stored whole, or one part of a large
    /// one (plus a 36-byte header). Bigger transactions must come in parts.
    /// Also bounds what `open` allocates for a length read from disk.
    pub max_record_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: 512 << 20,
        }
    }
}

impl StoreOptions {
    fn log_options(&self) -> LogOptions {
        LogOptions {
            // The store starts segments itself (each begins with a BASE
            // record), so the segment log must never roll on its own.
            segment_bytes: u64::MAX,
            max_record_bytes: self.max_record_bytes,
        }
    }
}

/// What [`EventStore::open`] (or an install) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// The store generation (bumped by each checkpoint install).
    pub generation: u64,
    /// Segment files (before the one `open` starts).
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Bytes of a torn record cut from the last segment (a crash mid-write).
    pub torn_tail_bytes_cut: u64,
    /// Records of an instance that a crash cut short: ignored (Paxos applies
    /// that instance again, from `checkpoint`).
    pub discarded_records: u64,
    /// Leftover parts of an abandoned transaction whose first parts were
    /// trimmed: ignored.
    pub orphan_parts: u64,
    /// First transaction index held.
    pub first_index: u64,
    /// One past the last.
    pub end_index: u64,
    /// Every instance below this is in the store.
    pub checkpoint: u64,
    /// The last GTID of each domain.
    pub last_pos: GtidPos,
    /// A transaction whose parts are still arriving: GTID and parts held.
    pub pending_part: Option<(Gtid, u32)>,
}

/// One part of a transaction too large for one Paxos value.
#[derive(Debug, Clone, Copy)]
pub struct TxnPart<'a> {
    /// The transaction's GTID.
    pub gtid: Gtid,
    /// 0, 1, 2, ... Part 0 must hold at least the whole GTID event.
    pub index: u32,
    /// This part completes the transaction.
    pub last: bool,
    /// The checksum setting of its events.
    pub checksum: Checksum,
    /// The next bytes of the transaction's events (any split).
    pub bytes: &'a [u8],
}

/// What [`EventStore::append_part`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartOutcome {
    /// Held; the transaction needs more parts.
    Pending {
        /// Parts held so far.
        parts: u32,
    },
    /// The transaction is complete at this log index (readable after the
    /// next sync).
    Complete {
        /// Its log index.
        index: u64,
    },
}

/// What [`EventStore::trim`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimReport {
    /// Segment files removed.
    pub removed_segments: usize,
    /// First transaction index still held.
    pub first_index: u64,
    /// The last GTID of each domain trimmed away.
    pub trimmed: GtidPos,
}

/// One transaction's record(s) to write.
struct Item<'a> {
    gtid: Gtid,
    checksum: Checksum,
    part: u32,
    last: bool,
    bytes: &'a [u8],
}

/// The event store: every chosen transaction, durably, in chosen order; see
/// the [module docs](super).
pub struct EventStore {
    root: PathBuf,
    generation: u64,
    opts: StoreOptions,
    log: SegmentLog,
    shared: Arc<Shared>,
    /// State after everything written (synced or not): what the next
    /// append must extend.
    cur: Cursor,
    /// State after the last sync: what readers and `checkpoint()` see.
    durable: Cursor,
    /// Complete transactions written since the last sync.
    unpublished: Vec<TxnLoc>,
    /// One entry per segment file, oldest first.
    segs: Vec<SegInfo>,
    /// Bytes of the active segment.
    active_bytes: u64,
    /// Checkpoint the records on disk account for (`cur.checkpoint` may be
    /// ahead: instances with nothing to store).
    recorded_checkpoint: u64,
    scratch: Vec<u8>,
    failed: Option<String>,
    serving: Option<CheckpointReader>,
    installing: Option<CheckpointWriter>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("root", &self.root)
            .field("generation", &self.generation)
            .field("next_txn", &self.cur.next_txn)
            .field("checkpoint", &self.durable.checkpoint)
            .field("segments", &self.segs.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The store's state loaded from one generation.
struct Loaded {
    log: SegmentLog,
    cur: Cursor,
    /// Where the log starts for readers.
    head: BaseState,
    segs: Vec<SegInfo>,
    txns: Vec<TxnLoc>,
    active_bytes: u64,
    report: OpenReport,
}

fn base_record_bytes(len: usize) -> u64 {
    RECORD_OVERHEAD_BYTES + len as u64
}

/// Opens generation `generation` and replays it (see the module docs), then
/// starts a fresh segment with a BASE record, so that whatever a crash left
/// at the old tail is closed off.
fn load(root: &Path, generation: u64, opts: &StoreOptions) -> Result<Loaded, StoreError> {
    let dir = layout::gen_dir(root, generation);
    if !dir.is_dir() {
        return Err(StoreError::corrupt(
            root,
            format!("CURRENT names generation {generation}, which is missing"),
        ));
    }
    let (mut log, recovery) = SegmentLog::open(&dir, opts.log_options())?;
    if recovery.torn_tail_bytes_cut > 0 {
        tracing::warn!(
            dir = %dir.display(),
            bytes = recovery.torn_tail_bytes_cut,
            "event store ended in a torn record (crash during a write); cut it off"
        );
    }
    let mut rb = Rebuild::new();
    for item in log.replay()? {
        let (key, payload) = item?;
        rb.feed(key, &payload).map_err(|reason| {
            StoreError::corrupt(&dir, format!("record {}: {reason}", rb.records))
        })?;
    }
    let cur = rb
        .finish()
        .map_err(|reason| StoreError::corrupt(&dir, reason))?;
    // Every segment starts with a BASE record, except possibly an empty
    // last one (a crash right after starting it).
    if recovery.segments != rb.segs.len() && recovery.segments != rb.segs.len() + 1 {
        return Err(StoreError::corrupt(
            &dir,
            format!(
                "{} segment files but {} BASE records",
                recovery.segments,
                rb.segs.len()
            ),
        ));
    }
    let head = match &rb.head {
        Some(h) => h.clone(),
        None => return Err(StoreError::corrupt(&dir, "no BASE record")),
    };
    let first_index = head.next_txn;
    if rb.txns.iter().zip(first_index..).any(|(t, i)| t.index != i) {
        return Err(StoreError::corrupt(
            &dir,
            "transaction indexes are not contiguous from the first one held",
        ));
    }
    // The new segment's BASE makes the replayed state durable as the start
    // of what follows (no-op roll when the last segment is empty).
    log.roll()?;
    let base = cur.base();
    let payload = record::encode_base(&base);
    log.append(None, &payload)?;
    log.sync()?;
    rb.segs.push(SegInfo {
        base,
        max_key: None,
    });
    let report = OpenReport {
        generation,
        segments: recovery.segments,
        records: rb.records,
        torn_tail_bytes_cut: recovery.torn_tail_bytes_cut,
        discarded_records: rb.discarded_records,
        orphan_parts: rb.orphan_parts,
        first_index,
        end_index: cur.next_txn,
        checkpoint: cur.checkpoint,
        last_pos: cur.pos.clone(),
        pending_part: cur.partial.as_ref().map(|p| (p.gtid, p.parts)),
    };
    if rb.discarded_records > 0 {
        tracing::warn!(
            dir = %dir.display(),
            records = rb.discarded_records,
            checkpoint = cur.checkpoint,
            "event store: the last instance was cut short by a crash; it will be applied again"
        );
    }
    tracing::info!(
        dir = %dir.display(),
        segments = report.segments,
        transactions = report.end_index - report.first_index,
        first_index = report.first_index,
        checkpoint = report.checkpoint,
        last_pos = %report.last_pos,
        "opened event store"
    );
    Ok(Loaded {
        log,
        cur,
        head,
        segs: rb.segs,
        txns: rb.txns,
        active_bytes: SEGMENT_HEADER_BYTES + base_record_bytes(payload.len()),
        report,
    })
}

fn index_of(loaded: &Loaded) -> Index {
    let mut index = Index::new(
        loaded.log.reader(),
        loaded.head.next_txn,
        loaded.head.pos.clone(),
    );
    for t in &loaded.txns {
        index.push(*t);
    }
    index
}

fn apply_error(e: ApplyError) -> StoreError {
    match e {
        ApplyError::OutOfOrder {
            domain,
            current,
            new,
        } => StoreError::OutOfOrder {
            domain,
            current,
            new,
        },
        ApplyError::PartOutOfOrder {
            gtid,
            part,
            expected,
        } => StoreError::PartOutOfOrder {
            gtid,
            part,
            expected,
        },
        // Only a bug gets here (the writer computes the keys itself).
        ApplyError::Invalid(reason) => StoreError::Corrupt {
            path: PathBuf::new(),
            reason,
        },
    }
}

impl EventStore {
    /// Opens the store in `dir` (creating it if needed), verifies and
    /// replays it. A torn tail is cut; the records of an instance that a
    /// crash cut short are ignored (the checkpoint stays before it); any
    /// other damage is an error.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<(EventStore, OpenReport), StoreError> {
        layout::ensure_root(dir)?;
        let generation = match layout::read_current(dir)? {
            Some(g) => {
                layout::remove_others(dir, Some(g))?;
                g
            }
            None => {
                // A new store, or one whose creation a crash interrupted
                // before CURRENT was written (generation 0 holding at most
                // its first BASE record). Anything else without CURRENT is
                // not ours to wipe.
                let gens = layout::generations(dir)?;
                if gens.iter().any(|g| *g != 0) {
                    return Err(StoreError::corrupt(
                        dir,
                        format!("CURRENT is missing but generations {gens:?} exist"),
                    ));
                }
                let gdir = layout::gen_dir(dir, 0);
                if gdir.is_dir() {
                    let (_, found) = SegmentLog::open(&gdir, opts.log_options())?;
                    if found.records > 1 {
                        return Err(StoreError::corrupt(
                            dir,
                            format!(
                                "CURRENT is missing but generation 0 holds {} records",
                                found.records
                            ),
                        ));
                    }
                }
                layout::remove_others(dir, None)?;
                let gdir = layout::gen_dir(dir, 0);
                let (mut log, _) = SegmentLog::open(&gdir, opts.log_options())?;
                let base = Cursor {
                    next_key: 0,
                    next_txn: 0,
                    pos: GtidPos::new(),
                    chain: 0,
                    checkpoint: 0,
                    partial: None,
                }
                .base();
                log.append(None, &record::encode_base(&base))?;
                log.sync()?;
                drop(log);
                layout::write_current(dir, 0)?;
                0
            }
        };
        let loaded = load(dir, generation, &opts)?;
        let index = index_of(&loaded);
        let (end_tx, _) = watch::channel(index.end());
        let shared = Arc::new(Shared {
            index: Mutex::new(index),
            end_tx,
        });
        let report = loaded.report.clone();
        let store = EventStore {
            root: dir.to_path_buf(),
            generation,
            opts,
            log: loaded.log,
            shared,
            durable: loaded.cur.clone(),
            recorded_checkpoint: loaded.cur.checkpoint,
            cur: loaded.cur,
            unpublished: Vec::new(),
            segs: loaded.segs,
            active_bytes: loaded.active_bytes,
            scratch: Vec::new(),
            failed: None,
            serving: None,
            installing: None,
        };
        Ok((store, report))
    }

    /// A reader of the durable transactions (the replication master's
    /// [`TransactionSource`](crate::master::TransactionSource)).
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The last GTID of each domain, counting everything appended (synced or
    /// not): the position the next append must extend.
    pub fn last_pos(&self) -> &GtidPos {
        &self.cur.pos
    }

    /// The rolling checksum over every transaction appended (synced or not):
    /// crc32 chained over (previous value, GTID, event bytes). With
    /// [`EventStore::last_pos`] it is what a proposal's compare-and-set
    /// checks.
    pub fn rolling_checksum(&self) -> u32 {
        self.cur.chain
    }

    /// Every Paxos instance below this is in the store and durable (what
    /// `paxos::StateMachine::checkpoint` reports).
    pub fn checkpoint(&self) -> u64 {
        self.durable.checkpoint
    }

    /// The next instance `append` accepts (past everything appended, synced
    /// or not).
    pub fn next_instance(&self) -> u64 {
        self.cur.checkpoint
    }

    /// Index the next complete transaction will get.
    pub fn end_index(&self) -> u64 {
        self.cur.next_txn
    }

    /// First index held.
    pub fn first_index(&self) -> u64 {
        self.shared.lock().first
    }

    /// The last GTID of each domain trimmed away.
    pub fn trimmed_pos(&self) -> GtidPos {
        self.shared.lock().trimmed.clone()
    }

    /// Does the store hold the transaction with exactly this GTID (appended,
    /// synced or not, and not trimmed)?
    pub fn contains(&self, gtid: &Gtid) -> bool {
        self.unpublished.iter().any(|t| t.gtid == *gtid)
            || self.shared.lock().find_gtid(gtid).is_some()
    }

    /// The transaction whose parts are arriving: its GTID and parts held.
    pub fn pending_part(&self) -> Option<(Gtid, u32)> {
        self.cur.partial.as_ref().map(|p| (p.gtid, p.parts))
    }

    /// The running rolling checksum of the transaction whose parts are
    /// arriving: crc32 over (the chain before it LE, domain LE, server LE,
    /// seq LE, the bytes of the parts held). What the Paxos state machine's
    /// compare-and-set checks a next part against.
    pub fn pending_chain(&self) -> Option<u32> {
        self.cur
            .partial
            .as_ref()
            .map(|p| p.hasher.clone().finalize())
    }

    /// Segment files of the current generation.
    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    /// The current generation (bumped by each install).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn ensure_ok(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Records a write failure: after it, what is on disk is unknown until
    /// `open` verifies it again.
    fn fail(&mut self, e: StoreError) -> StoreError {
        tracing::error!(dir = %self.root.display(), error = %e, "event store write failed; refusing further writes");
        self.failed = Some(e.to_string());
        e
    }

    fn check_instance(&self, instance: u64) -> Result<(), StoreError> {
        if instance < self.cur.checkpoint {
            return Err(StoreError::InstanceOutOfOrder {
                instance,
                next: self.cur.checkpoint,
            });
        }
        Ok(())
    }

    /// Stores the transactions chosen in Paxos instance `instance`, in
    /// order (buffered: durable and visible to readers after
    /// [`EventStore::sync`]). All or nothing: a transaction out of GTID
    /// order refuses the whole call. Returns their log indexes. Each
    /// instance is appended once (`instance >= next_instance()`); instances
    /// skipped count as applied with nothing to store. Abandons a
    /// transaction whose parts were arriving (the chosen log moved on).
    pub fn append(
        &mut self,
        instance: u64,
        txns: &[Transaction],
    ) -> Result<Range<u64>, StoreError> {
        let items: Vec<Item<'_>> = txns
            .iter()
            .map(|t| Item {
                gtid: t.gtid(),
                checksum: t.checksum(),
                part: 0,
                last: true,
                bytes: t.bytes(),
            })
            .collect();
        self.write_instance(instance, &items)
    }

    /// [`EventStore::append`] for transactions given as their raw events
    /// (each one complete group, checked).
    pub fn append_bytes(
        &mut self,
        instance: u64,
        txns: &[&[u8]],
        checksum: Checksum,
    ) -> Result<Range<u64>, StoreError> {
        let mut items = Vec::with_capacity(txns.len());
        for bytes in txns {
            let t = Transaction::from_bytes(bytes, checksum)?;
            items.push(Item {
                gtid: t.gtid(),
                checksum,
                part: 0,
                last: true,
                bytes,
            });
        }
        self.write_instance(instance, &items)
    }

    /// Stores one part of a large transaction, chosen alone in `instance`.
    /// Parts are held durably (after sync) but readers see the transaction
    /// only once its last part is stored. Part 0 starts a transaction
    /// (abandoning one in progress); part n must follow part n-1 of the same
    /// GTID, or it is refused ([`StoreError::PartOutOfOrder`], nothing
    /// stored, the instance still to be applied).
    pub fn append_part(
        &mut self,
        instance: u64,
        part: TxnPart<'_>,
    ) -> Result<PartOutcome, StoreError> {
        if part.index == 0 {
            // The GTID given must be the one in the events (readers rebuild
            // the transaction from them).
            let (ev, _) = Event::read(part.bytes, part.checksum)?;
            let g = ev.gtid()?.gtid();
            if g != part.gtid {
                return Err(StoreError::PartOutOfOrder {
                    gtid: part.gtid,
                    part: 0,
                    expected: format!("its first event is the GTID event of {g}"),
                });
            }
        }
        let item = Item {
            gtid: part.gtid,
            checksum: part.checksum,
            part: part.index,
            last: part.last,
            bytes: part.bytes,
        };
        let range = self.write_instance(instance, &[item])?;
        Ok(if range.is_empty() {
            PartOutcome::Pending {
                parts: self.cur.partial.as_ref().map_or(0, |p| p.parts),
            }
        } else {
            PartOutcome::Complete { index: range.start }
        })
    }

    /// Notes that `instance` was applied with nothing to store (a no-op, a
    /// lease or membership value, a proposal whose compare-and-set failed):
    /// the checkpoint moves past it at the next sync.
    pub fn mark_applied(&mut self, instance: u64) -> Result<(), StoreError> {
        self.write_instance(instance, &[]).map(|_| ())
    }

    fn write_instance(
        &mut self,
        instance: u64,
        items: &[Item<'_>],
    ) -> Result<Range<u64>, StoreError> {
        self.ensure_ok()?;
        self.check_instance(instance)?;
        let start_txn = self.cur.next_txn;
        // Paxos instances never get near u64::MAX; saturate rather than wrap.
        let after = instance.saturating_add(1);
        if items.is_empty() {
            self.cur.checkpoint = after;
            return Ok(start_txn..start_txn);
        }
        let max = self.opts.max_record_bytes;
        for it in items {
            let len = (DATA_HEADER_LEN + it.bytes.len()) as u64;
            if len > max {
                return Err(StoreError::TooLarge {
                    what: format!("part {} of transaction {}", it.part, it.gtid),
                    len,
                    max,
                });
            }
        }
        // Dry run on a copy, so that a refused call changes nothing.
        let mut next = self.cur.clone();
        let mut headers = Vec::with_capacity(items.len());
        let mut locs = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let mut h = DataHeader {
                instance,
                ends_instance: i + 1 == items.len(),
                gtid: it.gtid,
                checksum: it.checksum,
                part: it.part,
                last: it.last,
                chain_after: 0,
            };
            let key = next.next_key;
            let (applied, chain) = next.apply(key, &h, it.bytes, false).map_err(apply_error)?;
            if let Applied::Txn(loc) = applied {
                locs.push(loc);
            }
            if it.last {
                h.chain_after = chain;
            }
            headers.push((key, h));
        }
        next.checkpoint = after;

        let incoming: u64 = items
            .iter()
            .map(|it| RECORD_OVERHEAD_BYTES + (DATA_HEADER_LEN + it.bytes.len()) as u64)
            .sum();
        let active_has_data = self.segs.last().is_some_and(|s| s.max_key.is_some());
        if active_has_data && self.active_bytes.saturating_add(incoming) > self.opts.segment_bytes {
            self.roll_segment()?;
        }
        for ((key, h), it) in headers.iter().zip(items) {
            self.scratch.clear();
            record::encode_data_header(h, &mut self.scratch);
            self.scratch.extend_from_slice(it.bytes);
            if let Err(e) = self.log.append(Some(*key), &self.scratch) {
                return Err(self.fail(e.into()));
            }
            if let Some(seg) = self.segs.last_mut() {
                seg.max_key = Some(*key);
            }
        }
        // Release a large part's copy rather than keep it for the next call.
        if self.scratch.capacity() > (4 << 20) {
            self.scratch = Vec::new();
        }
        self.active_bytes += incoming;
        self.cur = next;
        self.recorded_checkpoint = self.cur.checkpoint;
        self.unpublished.extend_from_slice(&locs);
        Ok(start_txn..self.cur.next_txn)
    }

    /// Starts a new segment whose BASE record holds the state so far. The
    /// segment log fsyncs the finished segment; the BASE is fsync'd at once,
    /// because trimming may make this segment the first one, and its BASE
    /// is then the only record of what came before.
    fn roll_segment(&mut self) -> Result<(), StoreError> {
        let base = self.cur.base();
        let payload = record::encode_base(&base);
        let r = self
            .log
            .roll()
            .and_then(|()| self.log.append(None, &payload))
            .and_then(|()| self.log.sync());
        if let Err(e) = r {
            return Err(self.fail(e.into()));
        }
        self.recorded_checkpoint = base.checkpoint;
        self.segs.push(SegInfo {
            base,
            max_key: None,
        });
        self.active_bytes = SEGMENT_HEADER_BYTES + base_record_bytes(payload.len());
        Ok(())
    }

    /// Makes everything appended durable with one fsync (group commit),
    /// then shows the new transactions to readers and wakes the waiting
    /// ones, and moves [`EventStore::checkpoint`].
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.ensure_ok()?;
        if self.cur.checkpoint > self.recorded_checkpoint {
            let payload = record::encode_progress(self.cur.checkpoint);
            if let Err(e) = self.log.append(None, &payload) {
                return Err(self.fail(e.into()));
            }
            self.active_bytes += base_record_bytes(payload.len());
            self.recorded_checkpoint = self.cur.checkpoint;
        }
        if let Err(e) = self.log.sync() {
            return Err(self.fail(e.into()));
        }
        self.durable = self.cur.clone();
        if !self.unpublished.is_empty() {
            let end = {
                let mut idx = self.shared.lock();
                for t in self.unpublished.drain(..) {
                    idx.push(t);
                }
                idx.end()
            };
            self.shared.end_tx.send_if_modified(|v| {
                let changed = *v != end;
                *v = end;
                changed
            });
        }
        Ok(())
    }

    /// Retention: removes the oldest segments whose transactions are all
    /// both applied by the local MariaDB (`applied`, its GTID position) and
    /// older than the newest `min_window` transactions. Whole segments
    /// only, so somewhat more than that may stay. A transaction whose parts
    /// are arriving is never trimmed.
    pub fn trim(&mut self, applied: &GtidPos, min_window: u64) -> Result<TrimReport, StoreError> {
        self.ensure_ok()?;
        let below = {
            let idx = self.shared.lock();
            let end = idx.end();
            let cut = idx
                .first_not_in(applied)
                .min(end.saturating_sub(min_window))
                .max(idx.first);
            let mut below = self.cur.next_key;
            if let Some(t) = idx.get(cut) {
                below = below.min(t.first_key);
            }
            if let Some(t) = self.unpublished.first() {
                below = below.min(t.first_key);
            }
            if let Some(p) = &self.cur.partial {
                below = below.min(p.first_key);
            }
            below
        };
        // The segment log removes exactly these (same rule); mirror it.
        let last = self.segs.len().saturating_sub(1);
        let removable: Vec<bool> = self
            .segs
            .iter()
            .enumerate()
            .map(|(i, s)| i < last && s.max_key.is_none_or(|m| m < below))
            .collect();
        let expected = removable.iter().filter(|r| **r).count();
        let mut removed = 0;
        if expected > 0 {
            removed = match self.log.remove_segments_below(below) {
                Ok(n) => n,
                // Which files went is unknown now: stop writing; open
                // re-reads the directory.
                Err(e) => return Err(self.fail(e.into())),
            };
            if removed != expected {
                return Err(self.fail(StoreError::corrupt(
                    &self.root,
                    format!("trim removed {removed} segments where {expected} were expected"),
                )));
            }
            let mut keep = removable.iter().map(|r| !*r);
            self.segs.retain(|_| keep.next().unwrap_or(true));
            let Some(seg0) = self.segs.first().map(|s| s.base.clone()) else {
                return Err(self.fail(StoreError::corrupt(&self.root, "no segment left")));
            };
            let mut idx = self.shared.lock();
            if seg0.next_txn >= idx.first {
                // The first segment left may start inside a transaction
                // split in parts (segments roll between parts): it is
                // trimmed too, as `open` will find (its first parts are
                // gone). Such a transaction was durable: `below` kept every
                // part of anything not yet synced.
                let mut first = seg0.next_txn;
                let mut trimmed = seg0.pos;
                while let Some(t) = idx.get(first) {
                    if t.first_key >= seg0.next_key {
                        break;
                    }
                    trimmed.set(t.gtid);
                    first += 1;
                }
                idx.trim_to(first, trimmed);
            }
            tracing::info!(removed, first_index = idx.first, "event store trimmed");
            drop(idx);
        }
        let idx = self.shared.lock();
        Ok(TrimReport {
            removed_segments: removed,
            first_index: idx.first,
            trimmed: idx.trimmed.clone(),
        })
    }

    fn identity(&self) -> Result<Identity, StoreError> {
        let first = self
            .segs
            .first()
            .map(|s| s.base.clone())
            .ok_or_else(|| StoreError::corrupt(&self.root, "no segment"))?;
        Ok(Identity {
            generation: self.generation,
            checkpoint: self.durable.checkpoint,
            segments: self.segs.len(),
            first,
            end: self.durable.base(),
        })
    }

    /// A reader of a checkpoint image of the durable state (what the last
    /// sync made durable): every transaction held, any parts held, the
    /// position, checksum and checkpoint. Appends and trims after this call
    /// do not change the image.
    pub fn checkpoint_reader(&self) -> Result<CheckpointReader, StoreError> {
        Ok(CheckpointReader::new(self.identity()?, self.log.replay()?))
    }

    /// `paxos::StateMachine::read_checkpoint`: `max` bytes of the image at
    /// `offset`. Offset 0 starts a new image (of the current durable
    /// state); later offsets continue it. A repeated or skipped offset is
    /// served by regenerating the image only if the store has not moved
    /// since (same checkpoint, same segments), otherwise refused (the
    /// receiver starts over).
    pub fn read_checkpoint(
        &mut self,
        offset: u64,
        max: usize,
    ) -> Result<CheckpointChunk, StoreError> {
        let fresh = offset == 0 || self.serving.as_ref().is_none_or(|r| r.offset() != offset);
        if fresh {
            let mut reader = self.checkpoint_reader()?;
            if offset != 0 {
                let same = self
                    .serving
                    .as_ref()
                    .is_some_and(|old| old.identity == reader.identity);
                if !same {
                    self.serving = None;
                    return Err(StoreError::Image(format!(
                        "no image in progress at offset {offset} (the store moved on): start over"
                    )));
                }
                reader.skip_to(offset)?;
            }
            self.serving = Some(reader);
        }
        let Some(reader) = self.serving.as_mut() else {
            return Err(StoreError::Image("no image in progress".into()));
        };
        reader.next_chunk(max)
    }

    /// Starts receiving a checkpoint image into a staging directory beside
    /// the store (the store itself is untouched until
    /// [`EventStore::install`]).
    pub fn begin_install(&self, checkpoint: u64) -> Result<CheckpointWriter, StoreError> {
        let generation = self.generation + 1;
        CheckpointWriter::create(
            layout::staging_dir(&self.root, generation),
            generation,
            checkpoint,
            self.opts.log_options(),
        )
    }

    /// Replaces the store with a fully received image, atomically: the
    /// staging directory becomes the next generation and `CURRENT` is
    /// switched to it with a rename (both fsync'd); then the old generation
    /// is deleted. Readers see the new content from here on (indexes are
    /// global, so a dump in progress stays consistent or gets
    /// `IndexTrimmed`).
    pub fn install(&mut self, writer: CheckpointWriter) -> Result<OpenReport, StoreError> {
        let (staging, generation) = writer.close()?;
        let gdir = layout::gen_dir(&self.root, generation);
        if gdir.exists() {
            std::fs::remove_dir_all(&gdir).map_err(|e| StoreError::io(&gdir, e))?;
        }
        std::fs::rename(&staging, &gdir).map_err(|e| StoreError::io(&gdir, e))?;
        layout::sync_dir(&self.root)?;
        layout::write_current(&self.root, generation)?;
        // Committed: from here on a failure leaves the new generation on
        // disk, and only a reopen can bring memory back in line with it.
        let loaded = match load(&self.root, generation, &self.opts) {
            Ok(l) => l,
            Err(e) => return Err(self.fail(e)),
        };
        let old = layout::gen_dir(&self.root, self.generation);
        let index = index_of(&loaded);
        let end = index.end();
        *self.shared.lock() = index;
        self.shared.end_tx.send_replace(end);
        self.generation = generation;
        self.log = loaded.log;
        self.durable = loaded.cur.clone();
        self.recorded_checkpoint = loaded.cur.checkpoint;
        self.cur = loaded.cur;
        self.unpublished.clear();
        self.segs = loaded.segs;
        self.active_bytes = loaded.active_bytes;
        self.failed = None;
        self.serving = None;
        if let Err(e) = std::fs::remove_dir_all(&old)
            .and_then(|()| std::fs::File::open(&self.root).and_then(|d| d.sync_all()))
        {
            // Harmless: open removes stale generations.
            tracing::warn!(dir = %old.display(), error = %e, "could not remove the old generation");
        }
        tracing::info!(
            generation,
            checkpoint = loaded.report.checkpoint,
            last_pos = %loaded.report.last_pos,
            "installed an event store checkpoint"
        );
        Ok(loaded.report)
    }

    /// Receives a whole image given as chunks and installs it.
    pub fn install_checkpoint<I, C>(
        &mut self,
        checkpoint: u64,
        chunks: I,
    ) -> Result<OpenReport, StoreError>
    where
        I: IntoIterator<Item = C>,
        C: AsRef<[u8]>,
    {
        let mut w = self.begin_install(checkpoint)?;
        for c in chunks {
            if let Err(e) = w.write(c.as_ref()) {
                w.abort();
                return Err(e);
            }
        }
        self.install(w)
    }

    /// `paxos::StateMachine::write_checkpoint`: consecutive chunks from
    /// offset 0 (which discards a transfer in progress); the chunk with
    /// `done` installs the image.
    pub fn write_checkpoint(
        &mut self,
        checkpoint: u64,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<(), StoreError> {
        if offset == 0 {
            if let Some(old) = self.installing.take() {
                old.abort();
            }
            self.installing = Some(self.begin_install(checkpoint)?);
        }
        let Some(w) = self.installing.as_mut() else {
            return Err(StoreError::Image(format!(
                "chunk at offset {offset} of checkpoint {checkpoint} with no transfer in progress"
            )));
        };
        if w.checkpoint() != checkpoint || w.received() != offset {
            let msg = format!(
                "chunk of checkpoint {checkpoint} at offset {offset}; expected checkpoint {} at offset {}",
                w.checkpoint(),
                w.received()
            );
            if let Some(w) = self.installing.take() {
                w.abort();
            }
            return Err(StoreError::Image(msg));
        }
        if let Err(e) = w.write(data) {
            if let Some(w) = self.installing.take() {
                w.abort();
            }
            return Err(e);
        }
        if done {
            let Some(w) = self.installing.take() else {
                return Err(StoreError::Image("no transfer in progress".into()));
            };
            if !w.is_complete() {
                w.abort();
                return Err(StoreError::Image(format!(
                    "checkpoint {checkpoint}: the last chunk does not end the image"
                )));
            }
            self.install(w)?;
        }
        Ok(())
    }
}

impl Drop for EventStore {
    fn drop(&mut self) {
        if let Some(w) = self.installing.take() {
            w.abort();
        }
    }
}
