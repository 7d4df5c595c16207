//! Durable log: [`SegmentLog`], an append-only log of opaque records, each optionally
//! keyed by a Paxos instance number. It is the persistence layer of the consensus
//! core, so it favours durability and loud failure over availability.
//!
//! # On-disk format
//!
//! A log is a directory of segment files named `{seq:020}.seg`, where `seq` is a
//! per-segment u64 that only ever increases (also across [`SegmentLog::reset`]).
//! Other files in the directory are ignored. Each segment is:
//!
//! ```text
//! segment header (24 bytes):
//!   magic "PXSEGLOG" | u32 LE version (1) | u64 LE seq | u32 LE crc32 of the previous 20 bytes
//! records, back to back:
//!   u32 LE payload_len | u8 flags | u64 LE instance | payload | u32 LE crc32
//! ```
//!
//! `flags` bit 0 means "has instance"; other bits must be zero, and `instance` must be
//! zero when bit 0 is clear. The crc32 (`crc32fast`) covers every preceding byte of
//! the record: `payload_len`, `flags`, `instance` and `payload`. A record therefore
//! costs [`RECORD_OVERHEAD_BYTES`] on top of its payload.
//!
//! # Durability contract
//!
//! * [`SegmentLog::append`] writes the record to the OS (one `pwrite` for normal sizes):
//!   it is immediately visible to [`LogReader`]s but not durable.
//! * [`SegmentLog::sync`] `fdatasync`s the active segment: everything appended before
//!   it is durable when it returns (group commit; a no-op when nothing is pending).
//! * Creating a segment fsyncs its header and then the directory; rolling to a new
//!   segment first fsyncs the finished one. So every segment but the last is complete
//!   on disk, and only the last can end in a partial (torn) record after a crash.
//! * Removing segments ([`SegmentLog::remove_segments_below`], [`SegmentLog::reset`])
//!   fsyncs the directory.
//!
//! # Recovery
//!
//! [`SegmentLog::open`] verifies every record and builds the index. A bad record in
//! the last segment with no valid record anywhere after it is a torn tail: it is cut
//! (truncate + fsync), logged with `tracing::warn!` and reported in
//! [`RecoveryReport`]. Anything else (bad bytes in a sealed segment, a bad segment
//! header, or a bad record followed by a valid one) is [`StorageError::Corrupt`]: the
//! log never skips damaged data, since that could silently drop a promise or an
//! accepted value. Length fields are validated against the data present and against
//! `max_record_bytes` before anything is allocated.
//!
//! # Failure
//!
//! After any write or fsync error the log enters a failed state: the error is returned
//! once, and every later mutating call returns [`StorageError::Failed`]. After a failed
//! fsync the page cache state is unknown (and a retried fsync may falsely succeed), so
//! a consensus node must stop and restart, letting `open` re-verify what is on disk.
//!
//! One process must own a log directory at a time; nothing here locks it.

mod error;
mod log;
mod record;
mod segment;

pub use error::StorageError;
pub use log::{LogReader, Replay, ReplayItem, SegmentLog};

/// A Paxos instance (slot) number used as a record key.
pub type InstanceId = u64;

/// Size of the header at the start of every segment file.
pub const SEGMENT_HEADER_BYTES: u64 = segment::SEGMENT_HEADER_LEN;

/// Bytes a record occupies on disk on top of its payload (13-byte header + 4-byte crc).
pub const RECORD_OVERHEAD_BYTES: u64 = record::OVERHEAD;

/// Tuning for a [`SegmentLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one started once the next record would take it
    /// past this size (a single record bigger than this still gets written, alone).
    pub segment_bytes: u64,
    /// Largest payload accepted by `append` (bigger => [`StorageError::RecordTooLarge`]).
    /// Also the bound `open` applies to length fields read from disk. Capped at
    /// `u32::MAX` by the record format.
    pub max_record_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 512 * 1024 * 1024,
        }
    }
}

/// What [`SegmentLog::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    /// Segment files found and verified.
    pub segments: usize,
    /// Valid records found.
    pub records: u64,
    /// Bytes of torn tail cut from the last segment (0 after a clean shutdown).
    pub torn_tail_bytes_cut: u64,
}
