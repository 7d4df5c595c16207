//! Error type of the storage layer.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the durable log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call on `path` failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record (or segment header) on disk failed verification and could not be
    /// explained as a torn tail. Never silently skipped.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// `append` was given a payload above `LogOptions::max_record_bytes`.
    #[error("record of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge { len: u64, max: u64 },
    /// An earlier write or fsync failed; the log refuses further mutations.
    #[error("log is failed after an earlier write error; restart the node")]
    Failed,
}

impl StorageError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}
