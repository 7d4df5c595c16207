//! The tokio driver: runs a [`Core`](crate::core::Core) against a
//! [`SegmentLog`](crate::storage::SegmentLog), a [`Transport`](crate::transport::Transport)
//! and the application's [`StateMachine`].
//!
//! # Shape
//!
//! [`Node::start`] recovers the core from the log, starts the transport and hands
//! everything to one *driver*, which owns the core, the log and the state machine
//! and is the only code that touches them. Everyone else talks to the driver
//! through a [`NodeHandle`]: requests go over a command channel, answers come back
//! on oneshot channels, and cheap read-only facts (who is master, counters) are
//! published by the driver into a small shared snapshot after every turn of its
//! loop. This is the mini-redis pattern: one owner, message passing, no locks
//! around protocol state.
//!
//! The driver runs on a dedicated OS thread with its own single-threaded tokio
//! runtime. Its work is dominated by blocking calls (`fdatasync`, the state
//! machine's `apply`, checkpoint file I/O); keeping them off the caller's runtime
//! means an fsync never stalls the transport's socket tasks or the application.
//!
//! # One turn of the loop
//!
//! 1. Wait for one event: a frame from a peer, a command from a handle, or a tick.
//! 2. Feed the core everything else that is already waiting (bounded), so one
//!    fsync covers many messages and proposals (group commit).
//! 3. While the core has work, take its [`Ready`](crate::core::Ready) and carry it
//!    out in the documented order: append records, one `sync`, compaction, send
//!    messages, apply chosen values, deliver outcomes; then update the peer table
//!    and start a checkpoint transfer if asked.
//! 4. Publish the snapshot the handles read.
//!
//! Any storage or core error is fatal: the node logs it, stops its transport,
//! fails every waiting proposer with [`ProposeFailed::NodeStopped`] and exposes
//! the reason through [`NodeHandle::stopped`] and [`NodeHandle::fatal_error`]. It
//! never carries on with a log whose state on disk is unknown.
//!
//! # Checkpoint transfer
//!
//! The core only decides *that* a checkpoint must be fetched and from whom; the
//! driver moves the bytes: it asks the peer for chunks (`CheckpointRequest`),
//! the peer's driver answers from [`StateMachine::read_checkpoint`]
//! (`CheckpointChunk`), and the chunks go to [`StateMachine::write_checkpoint`].
//! After the last one the core is told with `Core::install_checkpoint`.

mod checkpoint;
mod clock;
mod config;
mod driver;
mod error;
mod handle;
mod log;
mod node;

pub use clock::now;
pub use config::NodeConfig;
pub use error::{ApplyError, ProposeFailed, RuntimeError};
pub use handle::{NodeCounters, NodeHandle, Pending, RuntimeCounters};
pub use node::Node;

use crate::types::InstanceId;

/// One piece of a checkpoint image, as read by [`StateMachine::read_checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointChunk {
    /// The checkpoint the image belongs to: every instance below it is in it.
    pub checkpoint: InstanceId,
    /// The bytes at the requested offset (empty only together with `done`).
    pub data: Vec<u8>,
    /// This chunk ends the image.
    pub done: bool,
}

/// The application's replicated state machine (the binlog server's event store
/// will implement it).
///
/// All methods are called from the driver thread and may block (disk I/O is
/// expected); while one runs, the node does nothing else.
pub trait StateMachine: Send + 'static {
    type Output: Send + 'static;

    /// Applies one chosen instance: its application items in order (may be empty:
    /// a no-op or a lease/membership-only instance; still called so the app can
    /// track instance progress). Called exactly once per instance per process
    /// lifetime, in instance order, starting at `checkpoint()`. Returns one output
    /// per item (anything else stops the node), or why it could not apply the
    /// instance (a write failed, say): the node then stops with that error, as
    /// it does on a log error, and a restart replays from `checkpoint()`.
    fn apply(
        &mut self,
        instance: InstanceId,
        items: Vec<Vec<u8>>,
    ) -> Result<Vec<Self::Output>, ApplyError>;

    /// Every instance below this is durably applied on the application's side
    /// (survives a crash). After a restart the library replays from here; log
    /// entries below it may be dropped.
    fn checkpoint(&self) -> InstanceId;

    /// Group commit for the application: called after the instances of one
    /// `Ready` were applied and their outputs handed out, and on every tick.
    /// `apply` may leave its effects undurable, and this call may defer them
    /// further (e.g. one fsync per few milliseconds), because a chosen
    /// instance is already durable in the Paxos log (a crash replays it from
    /// `checkpoint()`); `checkpoint()` must count only instances made durable,
    /// and the log keeps everything above it. An error stops the node.
    /// Default: nothing to do.
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// Veto hook: may this node campaign for / renew the master lease now? (The
    /// binlog server will say no while its MariaDB lags.) Asked on every tick, so
    /// keep it cheap. Default true.
    fn may_campaign(&self) -> bool {
        true
    }

    /// Checkpoint transfer, source side: up to `max` bytes of the current
    /// checkpoint image at `offset`. Successive calls for one transfer must see
    /// the same image as long as they report the same `checkpoint`; a newer
    /// checkpoint makes the receiver start over from offset 0.
    fn read_checkpoint(&mut self, offset: u64, max: usize) -> std::io::Result<CheckpointChunk>;

    /// Receiving side: consecutive chunks from offset 0 (offset 0 always starts a
    /// new transfer, discarding any partial one); after the one with done=true the
    /// state machine's state IS that checkpoint (durably), and `checkpoint()`
    /// returns `checkpoint`. An error on a chunk before the last aborts the
    /// transfer; an error on the last one stops the node.
    fn write_checkpoint(
        &mut self,
        checkpoint: InstanceId,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> std::io::Result<()>;
}
