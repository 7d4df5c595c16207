//! Errors of the event store.

use std::io;
use std::path::{Path, PathBuf};

use binlog::Gtid;

/// Everything the event store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The segment log failed (I/O, a corrupt record it could not explain as
    /// a torn tail, a record too large, or an earlier write failure).
    #[error("event store log: {0}")]
    Storage(#[from] paxos::storage::StorageError),

    /// A file-system call of the store itself failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// Stored records that pass their CRC but do not form a valid store:
    /// never skipped.
    #[error("corrupt event store at {path}: {reason}")]
    Corrupt {
        /// The store (or generation) directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A transaction does not move its domain forward (gtid_strict_mode).
    #[error("transaction {new} does not follow {current} in domain {domain}")]
    OutOfOrder {
        /// The domain.
        domain: u32,
        /// The store's last GTID in that domain.
        current: Gtid,
        /// The rejected GTID.
        new: Gtid,
    },

    /// An instance at or below one already applied.
    #[error("instance {instance} is below the store's next instance {next} (already applied)")]
    InstanceOutOfOrder {
        /// The instance given.
        instance: u64,
        /// The first instance not applied yet.
        next: u64,
    },

    /// A part that does not continue the transaction in progress.
    #[error("part {part} of {gtid} is out of order: {expected}")]
    PartOutOfOrder {
        /// The transaction.
        gtid: Gtid,
        /// The part index given.
        part: u32,
        /// What the store has.
        expected: String,
    },

    /// A transaction (or part) too large for one record: send it in parts.
    #[error("{what} of {len} bytes exceeds the record limit of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        len: u64,
        /// The limit (`StoreOptions::max_record_bytes`).
        max: u64,
    },

    /// The bytes given are not a transaction.
    #[error("bad transaction: {0}")]
    Binlog(#[from] binlog::Error),

    /// A checkpoint image that cannot be served or installed.
    #[error("checkpoint image: {0}")]
    Image(String),

    /// An earlier write failed: the store refuses to write until reopened
    /// (what is on disk is unknown; `open` re-verifies it).
    #[error("the event store failed earlier ({0}); reopen it")]
    Failed(String),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for io::Error {
    /// For `paxos::StateMachine::{read_checkpoint, write_checkpoint}`, which
    /// speak `io::Result`.
    fn from(e: StoreError) -> io::Error {
        let kind = match &e {
            StoreError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
