//! What a Paxos instance decides: a batch of items, some for the application,
//! some for the library's built-in state machines (lease, membership).

use crate::types::{InstanceId, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Unique name of a batch, so a proposer recognises its own value when it learns
/// what an instance chose (another proposer may have filled the instance).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchId {
    pub node: NodeId,
    /// Random per process start: sequence numbers restart after a crash.
    pub incarnation: u64,
    pub seq: u64,
}

/// The value of one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Value {
    pub id: BatchId,
    pub items: Vec<Item>,
}

impl Value {
    /// A value that decides nothing; a new leader fills holes with it.
    pub fn noop(id: BatchId) -> Self {
        Value {
            id,
            items: Vec::new(),
        }
    }

    /// Approximate encoded size, for batching and flow-control limits.
    pub fn size_hint(&self) -> usize {
        32 + self.items.iter().map(Item::size_hint).sum::<usize>()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// Opaque bytes for the application's state machine. (Encoded as one byte
    /// string, not byte by byte: the same bytes, copied at memory speed.)
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(LeaseProposal),
    Membership(MembershipChange),
}

impl Item {
    pub fn size_hint(&self) -> usize {
        match self {
            Item::App(b) => b.len() + 8,
            Item::Lease(_) => 32,
            Item::Membership(_) => 64,
        }
    }
}

/// A compare-and-set on the lease: applies only if the lease version is still
/// `expect_version`. `node: None` releases the lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseProposal {
    pub node: Option<NodeId>,
    pub expect_version: u64,
    pub duration_ms: u64,
}

/// A compare-and-set on the membership: applies only if its version is still
/// `expect_version`. One node changes at a time, so old and new majorities intersect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    pub expect_version: u64,
    pub op: MembershipOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipOp {
    /// A non-voting member that receives every value.
    AddLearner { node: NodeId, addr: String },
    /// Make a learner a voter.
    Promote { node: NodeId },
    /// Remove a voter or learner.
    Remove { node: NodeId },
}

/// The set of members. Voters form majorities; learners only follow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub version: u64,
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = (NodeId, String)>) -> Self {
        Membership {
            version: 0,
            voters: voters.into_iter().collect(),
            learners: BTreeMap::new(),
        }
    }

    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains_key(&node)
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains_key(&node) || self.learners.contains_key(&node)
    }

    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Every member, voters first.
    pub fn all(&self) -> impl Iterator<Item = (NodeId, &String)> {
        self.voters
            .iter()
            .chain(self.learners.iter())
            .map(|(id, a)| (*id, a))
    }

    /// Checks and applies a change; the error says why it was refused.
    pub fn apply(&mut self, change: &MembershipChange) -> Result<(), String> {
        if change.expect_version != self.version {
            return Err(format!(
                "membership version is {}, change expected {}",
                self.version, change.expect_version
            ));
        }
        match &change.op {
            MembershipOp::AddLearner { node, addr } => {
                if self.contains(*node) {
                    return Err(format!("node {node} is already a member"));
                }
                self.learners.insert(*node, addr.clone());
            }
            MembershipOp::Promote { node } => match self.learners.remove(node) {
                Some(addr) => {
                    self.voters.insert(*node, addr);
                }
                None => return Err(format!("node {node} is not a learner")),
            },
            MembershipOp::Remove { node } => {
                if self.voters.contains_key(node) {
                    if self.voters.len() == 1 {
                        return Err("cannot remove the last voter".into());
                    }
                    self.voters.remove(node);
                } else if self.learners.remove(node).is_none() {
                    return Err(format!("node {node} is not a member"));
                }
            }
        }
        self.version += 1;
        Ok(())
    }
}

/// The replicated lease state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    pub master: Option<NodeId>,
    pub version: u64,
    pub duration_ms: u64,
}

/// The library's own replicated state: applied in log order on every node, and
/// saved whole when the log is compacted or a checkpoint is shipped to a peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemState {
    pub membership: Membership,
    pub lease: LeaseState,
}

/// One decided instance, as handed to the application.
#[derive(Clone, Debug, PartialEq)]
pub struct ChosenEntry {
    pub instance: InstanceId,
    /// The chosen value's id: equal ids mean equal values, on every node.
    pub batch: BatchId,
    /// The application items of this instance, in order, each with the local
    /// proposal id when this node proposed it.
    pub app: Vec<(Option<crate::types::ProposalId>, Vec<u8>)>,
}
