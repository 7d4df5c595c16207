//! Identifiers shared by every layer.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A cluster member. Chosen by the operator; never reused for another machine.
pub type NodeId = u64;

/// A Paxos instance (log slot). Instances are chosen independently and applied in order.
pub type InstanceId = u64;

/// Monotonic time as seen by one node: the time since an arbitrary, per-process epoch.
/// The core never reads a clock; drivers pass `now` in. Wall-clock time is never used.
pub type Time = Duration;

/// A proposal number. Ordered by round, then by node id, so two proposers never share one.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

impl Ballot {
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    pub fn new(round: u64, node: NodeId) -> Self {
        Ballot { round, node }
    }

    /// The smallest ballot owned by `node` that is above `self`.
    pub fn next_for(self, node: NodeId) -> Ballot {
        Ballot {
            round: self.round + 1,
            node,
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

/// Identifies one local proposal (not unique across nodes).
pub type ProposalId = u64;
