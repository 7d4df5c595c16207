//! Multi-Paxos for phxsql-rs: a sans-IO consensus core with a master lease
//! and membership, a durable segment log, a TCP transport and a tokio driver.
//!
//! Layers, from the inside out:
//! - [`core`]: the protocol as a deterministic state machine (no clock, no I/O);
//! - [`storage`]: the append-only segment log the core's records go to;
//! - [`transport`]: length-prefixed, checksummed frames over TCP;
//! - [`runtime`]: the tokio driver that wires them to an application state machine.

pub mod core;
pub mod message;
pub mod runtime;
pub mod storage;
pub mod transport;
pub mod types;
pub mod value;

pub use crate::core::{
    Core, CoreConfig, CoreError, Counters, EntryReader, Outcome, ProposeError, Ready, Recovery,
    Status,
};
pub use message::{LogRecord, Message};
pub use runtime::{
    ApplyError, CheckpointChunk, Node, NodeConfig, NodeCounters, NodeHandle, Pending,
    ProposeFailed, RuntimeError, StateMachine,
};
pub use types::{Ballot, InstanceId, NodeId, ProposalId, Time};
pub use value::{
    ChosenEntry, Item, LeaseProposal, LeaseState, Membership, MembershipChange, MembershipOp,
    SystemState, Value,
};
