//! Checkpoint images: the store's content as one byte stream, to seed a node
//! that is too far behind to catch up from the Paxos log.
//!
//! ```text
//! image  := "PXEVIMG1" | u32 LE version (1) | frame*
//! frame  := u8 tag | u64 LE key | u32 LE len | payload | u32 LE crc32(tag..payload)
//!   tag 1: an unkeyed store record (a BASE: the first frame, and one per
//!          later segment, so the receiver's segments mirror the source's)
//!   tag 2: a DATA record with its key (payload exactly as stored)
//!   tag 3: the end: a BASE record holding the state the image ends in
//! ```
//!
//! The source streams its segment log's records in order (from its own file
//! handles: a trim during the transfer does not disturb it), up to the last
//! record made durable when the image was started; the image's checkpoint
//! id is the store's checkpoint at that moment. The receiver replays each
//! record with the same code `open` uses (so a damaged or inconsistent image
//! is refused, never half installed), writes it into a staging segment log,
//! and checks at the end frame that it reached exactly the announced state.

use std::fs;
use std::path::{Path, PathBuf};

use paxos::runtime::CheckpointChunk;
use paxos::storage::{LogOptions, Replay, SegmentLog};

use super::StoreError;
use super::record::{self, BaseState, Record};
use super::state::Rebuild;

const MAGIC: &[u8; 8] = b"PXEVIMG1";
const VERSION: u32 = 1;
const PREAMBLE_LEN: usize = 12;
const FRAME_HEADER_LEN: usize = 13;
const FRAME_TRAILER_LEN: usize = 4;

const TAG_UNKEYED: u8 = 1;
const TAG_KEYED: u8 = 2;
const TAG_END: u8 = 3;

fn frame(out: &mut Vec<u8>, tag: u8, key: u64, payload: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| StoreError::Image(format!("record of {} bytes", payload.len())))?;
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What makes two images of one store byte-for-byte identical: a reader
/// may be rebuilt to serve an offset again only when this has not changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub generation: u64,
    pub checkpoint: u64,
    pub segments: usize,
    pub first: BaseState,
    pub end: BaseState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Preamble,
    Records,
    Done,
}

/// Streams one checkpoint image (source side). Made by
/// [`super::EventStore::checkpoint_reader`].
pub struct CheckpointReader {
    pub(crate) identity: Identity,
    replay: Replay,
    /// The image ends after the DATA record with this key that ends its
    /// instance (`None`: the log holds no DATA record).
    stop_key: Option<u64>,
    buf: Vec<u8>,
    start: usize,
    offset: u64,
    stage: Stage,
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader")
            .field("checkpoint", &self.identity.checkpoint)
            .field("offset", &self.offset)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl CheckpointReader {
    pub(crate) fn new(identity: Identity, replay: Replay) -> Self {
        let stop_key = identity.end.next_key.checked_sub(1).filter(|_| {
            // No DATA record at all when the log still starts where it ends.
            identity.end.next_key > identity.first.next_key
        });
        CheckpointReader {
            identity,
            replay,
            stop_key,
            buf: Vec::new(),
            start: 0,
            offset: 0,
            stage: Stage::Preamble,
        }
    }

    /// The checkpoint the image holds: every instance below it.
    pub fn checkpoint(&self) -> u64 {
        self.identity.checkpoint
    }

    /// Bytes handed out so far (the offset of the next chunk).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True once the last chunk was handed out.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done && self.start == self.buf.len()
    }

    fn produce(&mut self) -> Result<(), StoreError> {
        match self.stage {
            Stage::Preamble => {
                self.buf.extend_from_slice(MAGIC);
                self.buf.extend_from_slice(&VERSION.to_le_bytes());
                self.stage = Stage::Records;
                Ok(())
            }
            Stage::Records => {
                let Some(item) = self.replay.next() else {
                    return Err(StoreError::Image(
                        "the log ended before the checkpoint's last record".into(),
                    ));
                };
                let (key, payload) = item?;
                let rec = record::decode(&payload).map_err(StoreError::Image)?;
                match (rec, key) {
                    (Record::Base(_), None) => {
                        frame(&mut self.buf, TAG_UNKEYED, 0, &payload)?;
                        if self.stop_key.is_none() {
                            self.finish()?;
                        }
                    }
                    // Progress is implied by the end frame's checkpoint.
                    (Record::Progress(_), None) => {}
                    (Record::Data(h, _), Some(k)) => {
                        frame(&mut self.buf, TAG_KEYED, k, &payload)?;
                        if Some(k) == self.stop_key && h.ends_instance {
                            self.finish()?;
                        }
                    }
                    _ => return Err(StoreError::Image("a record with an unexpected key".into())),
                }
                Ok(())
            }
            Stage::Done => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        let end = record::encode_base(&BaseState {
            checkpoint: self.identity.checkpoint,
            ..self.identity.end.clone()
        });
        frame(&mut self.buf, TAG_END, 0, &end)?;
        self.stage = Stage::Done;
        Ok(())
    }

    /// The next chunk of at most `max` bytes (at least 1).
    pub fn next_chunk(&mut self, max: usize) -> Result<CheckpointChunk, StoreError> {
        let max = max.max(1);
        while self.buf.len() - self.start < max && self.stage != Stage::Done {
            self.produce()?;
        }
        let n = max.min(self.buf.len() - self.start);
        let data = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        self.offset += n as u64;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 20) && self.start * 2 > self.buf.len() {
            // Keep the buffer from growing with the bytes already handed out.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(CheckpointChunk {
            checkpoint: self.identity.checkpoint,
            data,
            done: self.is_done(),
        })
    }

    /// Moves forward to `offset` (regenerating and dropping the bytes in
    /// between).
    pub(crate) fn skip_to(&mut self, offset: u64) -> Result<(), StoreError> {
        while self.offset < offset {
            if self.is_done() {
                return Err(StoreError::Image(format!(
                    "offset {offset} is past the end of the image ({} bytes)",
                    self.offset
                )));
            }
            let want = usize::try_from(offset - self.offset).unwrap_or(usize::MAX);
            self.next_chunk(want.min(4 << 20))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WStage {
    Preamble,
    Frames,
    Ended,
}

/// Receives one checkpoint image into a staging directory (receiving side).
/// Made by [`super::EventStore::begin_install`]; installed by
/// [`super::EventStore::install`]. Dropping it leaves the staging directory
/// behind; `abort` or the next `open` removes it.
pub struct CheckpointWriter {
    pub(crate) checkpoint: u64,
    pub(crate) generation: u64,
    pub(crate) dir: PathBuf,
    log: Option<SegmentLog>,
    rebuild: Rebuild,
    buf: Vec<u8>,
    start: usize,
    received: u64,
    stage: WStage,
    max_payload: u64,
    bases: u64,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("checkpoint", &self.checkpoint)
            .field("dir", &self.dir)
            .field("received", &self.received)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl CheckpointWriter {
    pub(crate) fn create(
        dir: PathBuf,
        generation: u64,
        checkpoint: u64,
        log_opts: LogOptions,
    ) -> Result<Self, StoreError> {
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        let max_payload = log_opts.max_record_bytes;
        let (log, _) = SegmentLog::open(&dir, log_opts)?;
        Ok(CheckpointWriter {
            checkpoint,
            generation,
            dir,
            log: Some(log),
            rebuild: Rebuild::new(),
            buf: Vec::new(),
            start: 0,
            received: 0,
            stage: WStage::Preamble,
            max_payload,
            bases: 0,
        })
    }

    /// The checkpoint being received.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Bytes received so far (the offset of the next chunk).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// True once the end frame arrived and was verified.
    pub fn is_complete(&self) -> bool {
        self.stage == WStage::Ended
    }

    fn bad(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Image(format!(
            "checkpoint {} at byte {}: {}",
            self.checkpoint,
            self.received,
            reason.into()
        ))
    }

    fn log(&mut self) -> Result<&mut SegmentLog, StoreError> {
        self.log
            .as_mut()
            .ok_or_else(|| StoreError::Image("the staging log is closed".into()))
    }

    /// Takes the next bytes of the image (chunks may split frames anywhere).
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(data);
        self.received += data.len() as u64;
        loop {
            let avail = &self.buf[self.start..];
            match self.stage {
                WStage::Preamble => {
                    if avail.len() < PREAMBLE_LEN {
                        break;
                    }
                    if &avail[..8] != MAGIC {
                        return Err(self.bad("not an event store image (bad magic)"));
                    }
                    let mut v = [0u8; 4];
                    v.copy_from_slice(&avail[8..12]);
                    let v = u32::from_le_bytes(v);
                    if v != VERSION {
                        return Err(
                            self.bad(format!("image version {v}, this node reads {VERSION}"))
                        );
                    }
                    self.start += PREAMBLE_LEN;
                    self.stage = WStage::Frames;
                }
                WStage::Frames => {
                    if avail.len() < FRAME_HEADER_LEN {
                        break;
                    }
                    let tag = avail[0];
                    let mut k = [0u8; 8];
                    k.copy_from_slice(&avail[1..9]);
                    let key = u64::from_le_bytes(k);
                    let mut l = [0u8; 4];
                    l.copy_from_slice(&avail[9..13]);
                    let len = u32::from_le_bytes(l);
                    // Bounded before buffering a frame's worth of bytes.
                    if u64::from(len) > self.max_payload.saturating_add(4096) {
                        return Err(
                            self.bad(format!("frame of {len} bytes is over the record limit"))
                        );
                    }
                    let total = FRAME_HEADER_LEN + len as usize + FRAME_TRAILER_LEN;
                    if avail.len() < total {
                        break;
                    }
                    let body_end = FRAME_HEADER_LEN + len as usize;
                    let mut c = [0u8; 4];
                    c.copy_from_slice(&avail[body_end..total]);
                    if u32::from_le_bytes(c) != crc32fast::hash(&avail[..body_end]) {
                        return Err(self.bad("frame checksum mismatch"));
                    }
                    let payload = avail[FRAME_HEADER_LEN..body_end].to_vec();
                    self.start += total;
                    self.frame(tag, key, &payload)?;
                }
                WStage::Ended => {
                    if !avail.is_empty() {
                        return Err(self.bad("bytes after the end of the image"));
                    }
                    break;
                }
            }
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }

    fn frame(&mut self, tag: u8, key: u64, payload: &[u8]) -> Result<(), StoreError> {
        match tag {
            TAG_UNKEYED => {
                if !matches!(record::decode(payload), Ok(Record::Base(_))) {
                    return Err(self.bad("an unkeyed frame that is not a BASE record"));
                }
                self.rebuild.feed(None, payload).map_err(|e| self.bad(e))?;
                let first = self.bases == 0;
                self.bases += 1;
                let log = self.log()?;
                if !first {
                    // The source started a segment here: so do we, so that
                    // every segment starts with its BASE (trimming relies
                    // on it).
                    log.roll()?;
                }
                log.append(None, payload)?;
            }
            TAG_KEYED => {
                self.rebuild
                    .feed(Some(key), payload)
                    .map_err(|e| self.bad(e))?;
                self.log()?.append(Some(key), payload)?;
            }
            TAG_END => {
                let Ok(Record::Base(end)) = record::decode(payload) else {
                    return Err(self.bad("the end frame is not a state record"));
                };
                if self.rebuild.in_group() {
                    return Err(self.bad("the image ends inside an instance"));
                }
                let Some(cur) = self.rebuild.cur.as_ref() else {
                    return Err(self.bad("the image has no BASE record"));
                };
                let mine = cur.base();
                if end.next_key != mine.next_key
                    || end.next_txn != mine.next_txn
                    || end.chain != mine.chain
                    || end.pos != mine.pos
                    || end.checkpoint < mine.checkpoint
                {
                    return Err(self.bad(format!(
                        "the image announces {end:?} but its records lead to {mine:?}"
                    )));
                }
                if end.checkpoint != self.checkpoint {
                    return Err(self.bad(format!(
                        "the image holds checkpoint {}, the transfer is for {}",
                        end.checkpoint, self.checkpoint
                    )));
                }
                let log = self.log()?;
                log.append(None, &record::encode_progress(end.checkpoint))?;
                log.sync()?;
                self.stage = WStage::Ended;
            }
            other => return Err(self.bad(format!("unknown frame tag {other}"))),
        }
        Ok(())
    }

    /// Closes the staging log; it must have received the whole image.
    pub(crate) fn close(mut self) -> Result<(PathBuf, u64), StoreError> {
        if self.stage != WStage::Ended {
            return Err(self.bad("the image is incomplete"));
        }
        self.log = None;
        Ok((std::mem::take(&mut self.dir), self.generation))
    }

    /// Drops the staging directory.
    pub fn abort(mut self) {
        self.log = None;
        remove_quietly(&self.dir);
    }
}

pub(crate) fn remove_quietly(dir: &Path) {
    if dir.as_os_str().is_empty() {
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a staging directory");
    }
}
