//! Errors of the runtime.

use crate::core::{CoreError, ProposeError};
use crate::storage::StorageError;
use crate::types::InstanceId;
use std::net::SocketAddr;

/// Why a [`StateMachine`](super::StateMachine) could not apply an instance.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Why a node could not start, or why it stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("log storage failed: {0}")]
    Storage(#[from] StorageError),
    /// A record in the log passed its checksum but is not a valid `LogRecord`.
    #[error("corrupt log: record #{index} (key {key:?}): {reason}")]
    CorruptRecord {
        index: u64,
        key: Option<u64>,
        reason: String,
    },
    #[error("consensus core failed: {0}")]
    Core(#[from] CoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The application's state machine broke its contract or failed to install a
    /// checkpoint.
    #[error("state machine failed: {0}")]
    StateMachine(String),
    /// The state machine could not apply a chosen instance.
    #[error("state machine failed to apply instance {instance}: {source}")]
    Apply {
        instance: InstanceId,
        #[source]
        source: ApplyError,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start the driver: {0}")]
    Spawn(std::io::Error),
    /// The driver thread panicked (a bug, possibly in the state machine).
    #[error("the node's driver panicked")]
    Panicked,
}

/// Why a proposal made through a [`NodeHandle`](super::NodeHandle) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeFailed {
    /// The core gave up on it (another value won the instance, no instance in
    /// time, or a compare-and-set did not apply).
    #[error(transparent)]
    Core(#[from] ProposeError),
    /// The node stopped (shut down or failed) before the proposal's fate was
    /// known here. It may or may not have been chosen.
    #[error("node stopped")]
    NodeStopped,
}
