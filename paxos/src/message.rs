//! Messages between nodes and records in the durable log.
//!
//! Both are encoded with postcard. Messages travel inside transport frames,
//! which add the cluster id, the sender and a CRC.

use crate::types::{Ballot, InstanceId};
use crate::value::{SystemState, Value};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1a: promise `ballot` for every instance from `from` on.
    Prepare { ballot: Ballot, from: InstanceId },
    /// Phase 1b. `accepted` holds every accepted, not yet known chosen, entry at or
    /// above max(from, chosen_prefix); instances below `chosen_prefix` are chosen
    /// and can be fetched with a catch-up request.
    Promise {
        ballot: Ballot,
        chosen_prefix: InstanceId,
        membership_version: u64,
        accepted: Vec<AcceptedEntry>,
    },
    /// Phase 2a.
    Accept {
        ballot: Ballot,
        instance: InstanceId,
        value: Value,
    },
    /// Phase 2b.
    Accepted {
        ballot: Ballot,
        instance: InstanceId,
    },
    /// A Prepare or Accept at `ballot` was refused: the acceptor promised `promised`.
    Reject { ballot: Ballot, promised: Ballot },
    /// Every instance below `upto` is chosen; where the receiver accepted a value
    /// at `ballot`, that value is the chosen one. (A leader sends this only while
    /// every instance it holds from its first one on was chosen at its own ballot.)
    Commit { ballot: Ballot, upto: InstanceId },
    /// Answer to Commit once the chosen prefix is durable: lets the leader know
    /// who has learned what (membership changes wait for it).
    CommitAck {
        chosen_prefix: InstanceId,
        membership_version: u64,
    },
    /// Asks for chosen values from `from` on, at most `max_bytes` of them.
    CatchUpRequest { from: InstanceId, max_bytes: u64 },
    /// Chosen values, contiguous from the requested instance.
    CatchUpResponse {
        entries: Vec<(InstanceId, Value)>,
        chosen_prefix: InstanceId,
    },
    /// The responder's log no longer holds the requested instance: install a
    /// checkpoint from it.
    CatchUpTruncated { log_start: InstanceId },
    /// Checkpoint transfer, run by the drivers (the core only starts it).
    CheckpointRequest { offset: u64 },
    CheckpointChunk {
        /// The application checkpoint: every instance below it is in `data`.
        checkpoint: InstanceId,
        /// The system state at `log_start`, the responder's first log instance.
        log_start: InstanceId,
        system: SystemState,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        done: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcceptedEntry {
    pub instance: InstanceId,
    pub ballot: Ballot,
    pub value: Value,
    /// The acceptor knows this value is chosen (its ballot may be unknown, e.g.
    /// learned by catch-up): a new leader must take it over whatever the ballots say.
    pub chosen: bool,
}

/// A record of the durable log. Records keyed by instance (Accepted, Chosen) can be
/// read back by instance; the newest one for an instance wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    Promise {
        ballot: Ballot,
    },
    Accepted {
        instance: InstanceId,
        ballot: Ballot,
        value: Value,
    },
    /// A value learned as chosen from a peer (its ballot is not known).
    Chosen {
        instance: InstanceId,
        value: Value,
    },
    /// Every instance below `upto` is chosen. Written lazily; losing one only means
    /// learning again from peers.
    ChosenPrefix {
        upto: InstanceId,
    },
    /// The system state as of `at` (every instance below it applied); nothing below
    /// `at` is in the log any more.
    Snapshot {
        at: InstanceId,
        system: SystemState,
    },
}

impl LogRecord {
    /// The instance key the log indexes this record under.
    pub fn instance(&self) -> Option<InstanceId> {
        match self {
            LogRecord::Accepted { instance, .. } | LogRecord::Chosen { instance, .. } => {
                Some(*instance)
            }
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail for these types.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The value a keyed record holds.
    pub fn into_value(self) -> Option<Value> {
        match self {
            LogRecord::Accepted { value, .. } | LogRecord::Chosen { value, .. } => Some(value),
            _ => None,
        }
    }
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Short name for logs and counters.
    /// A request that vouches for nothing in the sender's own log, so a driver
    /// may send it before its fsync of the same `Ready` (overlapping a leader's
    /// fsync with its followers'): Prepare, Accept, Commit, catch-up and
    /// checkpoint requests. The answers these requests draw are only handled
    /// after that fsync (the driver finishes a `Ready` first), and a leader
    /// counts its own vote only through its own durable record. Answers
    /// (Promise, Accepted, Reject, CommitAck, catch-up and checkpoint data)
    /// always wait for the fsync.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::Prepare { .. }
                | Message::Accept { .. }
                | Message::Commit { .. }
                | Message::CatchUpRequest { .. }
                | Message::CheckpointRequest { .. }
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Reject { .. } => "reject",
            Message::Commit { .. } => "commit",
            Message::CommitAck { .. } => "commit_ack",
            Message::CatchUpRequest { .. } => "catch_up_request",
            Message::CatchUpResponse { .. } => "catch_up_response",
            Message::CatchUpTruncated { .. } => "catch_up_truncated",
            Message::CheckpointRequest { .. } => "checkpoint_request",
            Message::CheckpointChunk { .. } => "checkpoint_chunk",
        }
    }
}
