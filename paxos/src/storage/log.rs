//! The writer (`SegmentLog`), the shared reader (`LogReader`) and `Replay`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::iter::FusedIterator;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::{debug, error, info};

use super::error::StorageError;
use super::record::{self, PosReader};
use super::segment::{self, Loc, Segment, SegmentFile};
use super::{InstanceId, LogOptions, RecoveryReport};

/// Payloads up to this size are framed in one buffer and written with one `pwrite`;
/// bigger ones are written in three parts instead of being copied.
const COALESCE_LIMIT: usize = 256 * 1024;

/// State shared between the writer and every `LogReader`.
#[derive(Debug, Default)]
struct Shared {
    index: BTreeMap<InstanceId, Loc>,
    files: HashMap<u64, Arc<SegmentFile>>,
}

fn read_lock(s: &RwLock<Shared>) -> RwLockReadGuard<'_, Shared> {
    // A panic while holding the lock cannot leave the map half-updated in a way that
    // matters (each critical section is a single insert/remove), so ignore poisoning.
    s.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock(s: &RwLock<Shared>) -> RwLockWriteGuard<'_, Shared> {
    s.write().unwrap_or_else(PoisonError::into_inner)
}

/// Append-only durable record log made of segment files. See the module docs.
///
/// Single writer: one process (and one `SegmentLog`) must own the directory.
pub struct SegmentLog {
    dir: PathBuf,
    opts: LogOptions,
    /// Effective payload limit: `max_record_bytes` capped by the u32 length field.
    max_payload: u64,
    /// Ascending by sequence; the last one is the active (written) segment. Only
    /// empty if a `reset` failed half-way, in which case `failed` is set.
    segments: Vec<Segment>,
    shared: Arc<RwLock<Shared>>,
    next_seq: u64,
    /// Records were appended since the last fsync of the active segment.
    unsynced: bool,
    /// Set by any write/fsync error; see `StorageError::Failed`.
    failed: bool,
    scratch: Vec<u8>,
}

impl fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("next_seq", &self.next_seq)
            .field("unsynced", &self.unsynced)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl SegmentLog {
    /// Opens (creating the directory if needed) and verifies every segment.
    ///
    /// A torn tail of the last segment (a bad record with nothing valid after it) is
    /// cut off, fsync'd, logged and reported. Any other damage is
    /// `StorageError::Corrupt`; nothing is modified in that case.
    pub fn open(
        dir: &Path,
        opts: LogOptions,
    ) -> Result<(SegmentLog, RecoveryReport), StorageError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
            // Make the new directory's own entry durable too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(parent)?;
            }
        }
        let max_payload = opts.max_record_bytes.min(u64::from(u32::MAX));
        let found = segment::list_segments(dir)?;
        let mut index = BTreeMap::new();
        let mut segments = Vec::with_capacity(found.len());
        let mut report = RecoveryReport::default();
        let count = found.len();
        for (i, (seq, path)) in found.into_iter().enumerate() {
            let scanned =
                segment::scan_segment(seq, path, i + 1 == count, max_payload, &mut index)?;
            report.records += scanned.segment.records;
            report.torn_tail_bytes_cut += scanned.torn_cut;
            segments.push(scanned.segment);
        }
        report.segments = segments.len();
        let next_seq = match segments.last() {
            Some(s) => s.seq.checked_add(1).ok_or_else(|| {
                StorageError::corrupt(&s.handle.path, 0, "segment sequence number exhausted")
            })?,
            None => 0,
        };
        let files = segments
            .iter()
            .map(|s| (s.seq, Arc::clone(&s.handle)))
            .collect();
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            opts,
            max_payload,
            segments,
            shared: Arc::new(RwLock::new(Shared { index, files })),
            next_seq,
            unsynced: false,
            failed: false,
            scratch: Vec::new(),
        };
        if log.segments.is_empty() {
            log.start_segment()?;
        }
        info!(
            dir = ?log.dir,
            segments = report.segments,
            records = report.records,
            torn_tail_bytes_cut = report.torn_tail_bytes_cut,
            "opened log"
        );
        Ok((log, report))
    }

    /// Streams every record in append order as `(instance key, payload)`.
    ///
    /// Covers the records present when it is called; reads lazily from disk (one
    /// buffered record at a time) and re-verifies checksums. Stops after the first error.
    pub fn replay(&self) -> Result<Replay, StorageError> {
        Ok(Replay {
            pending: self
                .segments
                .iter()
                .map(|s| (Arc::clone(&s.handle), s.len))
                .collect(),
            current: None,
            pos: 0,
            end: 0,
            max_payload: self.max_payload,
            done: false,
        })
    }

    /// Appends a record: written to the OS (visible to readers), not yet fsync'd; call
    /// `sync` to make it durable. Rolls to a new segment first if this record would
    /// push a non-empty active segment past `segment_bytes`.
    pub fn append(
        &mut self,
        instance: Option<InstanceId>,
        payload: &[u8],
    ) -> Result<(), StorageError> {
        self.ensure_ok()?;
        let too_large = StorageError::RecordTooLarge {
            len: payload.len() as u64,
            max: self.max_payload,
        };
        if payload.len() as u64 > self.max_payload {
            return Err(too_large);
        }
        let len = u32::try_from(payload.len()).map_err(|_| too_large)?;
        let total = record::OVERHEAD + u64::from(len);

        let active = self.active()?;
        if active.records > 0 && active.len.saturating_add(total) > self.opts.segment_bytes {
            self.roll_active()?;
        }

        let header = record::encode_header(instance, len);
        let crc = record::record_crc(&header, payload).to_le_bytes();
        let Some(active) = self.segments.last() else {
            return Err(StorageError::Failed);
        };
        let (seq, offset, handle) = (active.seq, active.len, Arc::clone(&active.handle));
        let written = if payload.len() <= COALESCE_LIMIT {
            self.scratch.clear();
            self.scratch.extend_from_slice(&header);
            self.scratch.extend_from_slice(payload);
            self.scratch.extend_from_slice(&crc);
            record::write_all_at(&handle.file, &self.scratch, offset)
        } else {
            record::write_all_at(&handle.file, &header, offset)
                .and_then(|()| {
                    record::write_all_at(&handle.file, payload, offset + record::HEADER_LEN)
                })
                .and_then(|()| {
                    record::write_all_at(&handle.file, &crc, offset + total - record::TRAILER_LEN)
                })
        };
        if let Err(e) = written {
            // The file may now hold a partial record; fail-stop, open() will cut it.
            return Err(self.fail(StorageError::io(&handle.path, e)));
        }

        self.unsynced = true;
        if let Some(active) = self.segments.last_mut() {
            active.len += total;
            active.records += 1;
            active.max_instance = active.max_instance.max(instance);
        }
        if let Some(i) = instance {
            write_lock(&self.shared)
                .index
                .insert(i, Loc { seq, offset, len });
        }
        Ok(())
    }

    /// Makes every record appended since the previous `sync` durable with one
    /// `fdatasync` (group commit). A no-op when nothing was appended.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.ensure_ok()?;
        if !self.unsynced {
            return Ok(());
        }
        let handle = Arc::clone(&self.active()?.handle);
        if let Err(e) = handle.file.sync_data() {
            return Err(self.fail(StorageError::io(&handle.path, e)));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Starts a new segment now (fsyncing the finished one), so that everything
    /// appended from here on can outlive the older segments. A no-op if the active
    /// segment holds no records yet (it already is a fresh segment).
    pub fn roll(&mut self) -> Result<(), StorageError> {
        self.ensure_ok()?;
        if self.active()?.records == 0 {
            return Ok(());
        }
        self.roll_active()
    }

    /// Deletes every non-active segment whose keyed records all have
    /// `instance < below` (segments with only unkeyed records included), forgets the
    /// index entries that pointed into them and fsyncs the directory. Returns how
    /// many were removed. Records in surviving segments stay readable whatever their
    /// instance, so a header written after `roll()` survives even `below = MAX`.
    pub fn remove_segments_below(&mut self, below: InstanceId) -> Result<usize, StorageError> {
        self.ensure_ok()?;
        let last = self.segments.len().saturating_sub(1);
        let removable: Vec<u64> = self.segments[..last]
            .iter()
            .filter(|s| s.max_instance.is_none_or(|m| m < below))
            .map(|s| s.seq)
            .collect();

        let mut removed = Vec::with_capacity(removable.len());
        let mut unlink_error = None;
        // Oldest first, so an interruption leaves a log missing only a prefix.
        for seq in removable {
            let Some(seg) = self.segments.iter().find(|s| s.seq == seq) else {
                continue;
            };
            match segment::remove_segment_file(&seg.handle.path) {
                Ok(()) => removed.push(seq),
                Err(e) => {
                    unlink_error = Some(e);
                    break;
                }
            }
        }
        if !removed.is_empty() {
            self.segments.retain(|s| !removed.contains(&s.seq));
            {
                // Forget exactly what pointed into the removed files: records kept in
                // other segments (a compaction header, say) stay readable whatever
                // their instance.
                let mut shared = write_lock(&self.shared);
                for seq in &removed {
                    shared.files.remove(seq);
                }
                shared.index.retain(|_, loc| !removed.contains(&loc.seq));
            }
            if let Err(e) = segment::sync_dir(&self.dir) {
                return Err(self.fail(e));
            }
            debug!(dir = ?self.dir, removed = removed.len(), below, "removed log segments");
        }
        match unlink_error {
            // A failed unlink leaves that segment (still tracked) in place: the log is
            // consistent, so this is reported but does not fail the log.
            Some(e) => Err(e),
            None => Ok(removed.len()),
        }
    }

    /// Removes every segment and starts empty (used when installing a checkpoint from
    /// a peer). fsyncs the directory. Any error fails the log, because the directory
    /// would be left holding a partial mix of old segments.
    pub fn reset(&mut self) -> Result<(), StorageError> {
        self.ensure_ok()?;
        {
            let mut shared = write_lock(&self.shared);
            shared.index.clear();
            shared.files.clear();
        }
        let segments = std::mem::take(&mut self.segments);
        self.unsynced = false;
        for (i, seg) in segments.iter().enumerate() {
            if let Err(e) = segment::remove_segment_file(&seg.handle.path) {
                // Keep tracking what is still on disk so Debug output stays truthful.
                self.segments = segments.into_iter().skip(i).collect();
                return Err(self.fail(e));
            }
        }
        // Creating the new segment fsyncs the directory, which also makes the
        // unlinks above durable.
        self.start_segment()?;
        info!(dir = ?self.dir, "log reset");
        Ok(())
    }

    /// Lowest instance currently in the index.
    pub fn first_instance(&self) -> Option<InstanceId> {
        read_lock(&self.shared).index.keys().next().copied()
    }

    /// Highest instance currently in the index.
    pub fn last_instance(&self) -> Option<InstanceId> {
        read_lock(&self.shared).index.keys().next_back().copied()
    }

    /// A cheap, cloneable, `Send + Sync` reader sharing the index with this writer.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_ok(&self) -> Result<(), StorageError> {
        if self.failed {
            Err(StorageError::Failed)
        } else {
            Ok(())
        }
    }

    fn active(&self) -> Result<&Segment, StorageError> {
        self.segments.last().ok_or(StorageError::Failed)
    }

    /// Enters the failed state. After a failed write or fsync the contents of the page
    /// cache (and thus of the file after a crash) are unknown, and retrying fsync can
    /// falsely report success on Linux, so the only safe course is to stop writing
    /// and let a restart re-verify the log from disk.
    fn fail(&mut self, err: StorageError) -> StorageError {
        error!(dir = ?self.dir, error = %err, "log write failed; refusing further writes");
        self.failed = true;
        err
    }

    /// Seals the active segment (fsync) and starts the next one.
    fn roll_active(&mut self) -> Result<(), StorageError> {
        let handle = Arc::clone(&self.active()?.handle);
        if let Err(e) = handle.file.sync_data() {
            return Err(self.fail(StorageError::io(&handle.path, e)));
        }
        self.unsynced = false;
        self.start_segment()
    }

    /// Creates the next segment (header fsync'd, directory fsync'd) and makes it active.
    fn start_segment(&mut self) -> Result<(), StorageError> {
        let seq = self.next_seq;
        let Some(next) = seq.checked_add(1) else {
            return Err(self.fail(StorageError::corrupt(
                &self.dir,
                0,
                "segment sequence number exhausted",
            )));
        };
        let seg = match segment::create_segment(&self.dir, seq) {
            Ok(seg) => seg,
            Err(e) => return Err(self.fail(e)),
        };
        self.next_seq = next;
        write_lock(&self.shared)
            .files
            .insert(seq, Arc::clone(&seg.handle));
        self.segments.push(seg);
        Ok(())
    }

    /// Test hook: swaps the active segment's handle for a read-only one, so the next
    /// write really fails with an I/O error.
    #[cfg(test)]
    fn break_active_file(&mut self) -> std::io::Result<()> {
        if let Some(active) = self.segments.last_mut() {
            let path = active.handle.path.clone();
            let file = fs::File::open(&path)?;
            active.handle = Arc::new(SegmentFile { path, file });
        }
        Ok(())
    }
}

/// Cloneable, `Send + Sync` read access to the newest record of each instance. Sees
/// every appended record (synced or not) as soon as `append` returns.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<RwLock<Shared>>,
}

impl fmt::Debug for LogReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = read_lock(&self.shared);
        f.debug_struct("LogReader")
            .field("instances", &shared.index.len())
            .field("segments", &shared.files.len())
            .finish()
    }
}

impl LogReader {
    /// Newest payload appended with this instance key, read from disk with `pread`
    /// and checksum-verified. `None` if the key is unknown or was removed.
    pub fn read(&self, instance: InstanceId) -> Result<Option<Vec<u8>>, StorageError> {
        let (loc, seg) = {
            let shared = read_lock(&self.shared);
            let Some(loc) = shared.index.get(&instance).copied() else {
                return Ok(None);
            };
            // Invariant: an indexed segment is always in `files` (both change under
            // the same lock); a miss would mean the record was removed.
            let Some(seg) = shared.files.get(&loc.seq).cloned() else {
                return Ok(None);
            };
            (loc, seg)
        };
        // The lock is released before the disk read; the Arc keeps the file open
        // even if the segment is removed meanwhile.
        let total = record::OVERHEAD + u64::from(loc.len);
        let mut buf = vec![0u8; loc.len as usize + record::OVERHEAD as usize];
        record::read_exact_at(&seg.file, &mut buf, loc.offset)
            .map_err(|e| StorageError::io(&seg.path, e))?;
        let header = record::verify_record_bytes(&buf)
            .map_err(|reason| StorageError::corrupt(&seg.path, loc.offset, reason))?;
        if header.instance != Some(instance) || header.len != loc.len {
            return Err(StorageError::corrupt(
                &seg.path,
                loc.offset,
                format!(
                    "index expects instance {instance} ({} bytes), record has {:?} ({} bytes)",
                    loc.len, header.instance, header.len
                ),
            ));
        }
        buf.truncate((total - record::TRAILER_LEN) as usize);
        buf.drain(..record::HEADER_LEN as usize);
        Ok(Some(buf))
    }

    /// Lowest instance currently in the index.
    pub fn first_instance(&self) -> Option<InstanceId> {
        read_lock(&self.shared).index.keys().next().copied()
    }

    /// Highest instance currently in the index.
    pub fn last_instance(&self) -> Option<InstanceId> {
        read_lock(&self.shared).index.keys().next_back().copied()
    }
}

/// Item yielded by `Replay`.
pub type ReplayItem = Result<(Option<InstanceId>, Vec<u8>), StorageError>;

/// Iterator over the records of the log in append order (see `SegmentLog::replay`).
/// Holds its own file handles, so later `remove_segments_below`/`reset` calls do not
/// disturb it.
pub struct Replay {
    /// Segments still to read, with the end of their data when the replay started.
    pending: VecDeque<(Arc<SegmentFile>, u64)>,
    current: Option<PosReader>,
    pos: u64,
    end: u64,
    max_payload: u64,
    done: bool,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("segments_left", &self.pending.len())
            .field("pos", &self.pos)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Iterator for Replay {
    type Item = ReplayItem;

    fn next(&mut self) -> Option<ReplayItem> {
        loop {
            if self.done {
                return None;
            }
            let reader = match &mut self.current {
                Some(r) if self.pos < self.end => r,
                _ => {
                    let Some((seg, end)) = self.pending.pop_front() else {
                        self.done = true;
                        self.current = None;
                        return None;
                    };
                    self.current = Some(PosReader::new(seg));
                    self.pos = segment::SEGMENT_HEADER_LEN;
                    self.end = end;
                    continue;
                }
            };
            let pos = self.pos;
            let result = record::read_record(reader, pos, self.end, self.max_payload, true);
            let path = &reader.segment().path;
            return Some(match result {
                Ok(Ok(rec)) => {
                    self.pos = rec.next;
                    Ok((rec.instance, rec.payload))
                }
                Ok(Err(reason)) => {
                    self.done = true;
                    Err(StorageError::corrupt(path, pos, reason))
                }
                Err(e) => {
                    self.done = true;
                    Err(StorageError::io(path, e))
                }
            });
        }
    }
}

impl FusedIterator for Replay {}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SegmentLog {
        match SegmentLog::open(dir, LogOptions::default()) {
            Ok((log, _)) => log,
            Err(e) => panic!("open failed: {e}"),
        }
    }

    #[test]
    fn failed_flag_blocks_every_mutation() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = open(tmp.path());
        log.append(Some(1), b"one").unwrap();
        log.failed = true;
        assert!(matches!(
            log.append(Some(2), b"two"),
            Err(StorageError::Failed)
        ));
        assert!(matches!(log.sync(), Err(StorageError::Failed)));
        assert!(matches!(log.roll(), Err(StorageError::Failed)));
        assert!(matches!(
            log.remove_segments_below(10),
            Err(StorageError::Failed)
        ));
        assert!(matches!(log.reset(), Err(StorageError::Failed)));
        // Reads are still allowed: the data already written is intact.
        assert_eq!(log.reader().read(1).unwrap().as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn real_write_error_fails_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = open(tmp.path());
        log.append(Some(1), b"one").unwrap();
        log.sync().unwrap();
        log.break_active_file().unwrap();
        let err = log.append(Some(2), b"two").unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "got {err:?}");
        assert!(log.failed);
        assert!(matches!(
            log.append(Some(3), b"three"),
            Err(StorageError::Failed)
        ));
        assert!(matches!(log.sync(), Err(StorageError::Failed)));
        // The failed append must not be visible.
        assert_eq!(log.reader().read(2).unwrap(), None);
        drop(log);

        // A restart recovers everything that was written before the failure.
        let log = open(tmp.path());
        let all: Vec<_> = log.replay().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(all, vec![(Some(1), b"one".to_vec())]);
    }

    #[test]
    fn too_large_does_not_fail_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            max_record_bytes: 4,
            ..LogOptions::default()
        };
        let (mut log, _) = SegmentLog::open(tmp.path(), opts).unwrap();
        assert!(matches!(
            log.append(None, b"12345"),
            Err(StorageError::RecordTooLarge { len: 5, max: 4 })
        ));
        log.append(None, b"1234").unwrap();
        log.sync().unwrap();
    }

    #[test]
    fn large_payload_uses_split_write() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = open(tmp.path());
        let big: Vec<u8> = (0..COALESCE_LIMIT + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        log.append(Some(9), &big).unwrap();
        log.append(Some(10), b"after").unwrap();
        log.sync().unwrap();
        drop(log);
        let log = open(tmp.path());
        assert_eq!(log.reader().read(9).unwrap(), Some(big));
        assert_eq!(
            log.reader().read(10).unwrap().as_deref(),
            Some(&b"after"[..])
        );
    }
}
