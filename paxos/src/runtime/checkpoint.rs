//! Checkpoint transfer between drivers.
//!
//! The requester asks for one chunk at a time (`CheckpointRequest { offset }`),
//! so at most one chunk is in flight and a slow receiver never buffers a whole
//! image. The source answers each request from its state machine's current
//! checkpoint; if that checkpoint moves on mid-transfer the requester starts over
//! at offset 0 (the image it had is no longer consistent with the new chunks).

use super::StateMachine;
use super::clock;
use super::driver::Driver;
use super::error::RuntimeError;
use crate::message::Message;
use crate::types::{InstanceId, NodeId, Time};
use crate::value::SystemState;
use std::time::Duration;
use tracing::{info, warn};

/// Bytes of checkpoint data per chunk.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// A transfer with no chunk for this long is abandoned (the core then retries
/// on a later contact, possibly with another peer).
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A transfer in progress (receiving side).
#[derive(Debug)]
pub(crate) struct Fetch {
    peer: NodeId,
    /// The checkpoint the chunks received so far belong to.
    checkpoint: Option<InstanceId>,
    /// Offset of the next chunk asked for.
    next_offset: u64,
    last_progress: Time,
}

impl<SM: StateMachine> Driver<SM> {
    /// The core asks for a checkpoint from `peer`: (re)start a transfer.
    pub(super) fn start_fetch(&mut self, peer: NodeId) {
        info!(node = self.node(), peer, "fetching a checkpoint");
        self.counters.checkpoint_fetches_started += 1;
        self.fetch = Some(Fetch {
            peer,
            checkpoint: None,
            next_offset: 0,
            last_progress: clock::now(),
        });
        self.send(peer, &Message::CheckpointRequest { offset: 0 });
    }

    /// Source side: answer with one chunk of our current checkpoint.
    pub(super) fn serve_checkpoint(&mut self, from: NodeId, offset: u64) {
        if self.core.is_bootstrapping() {
            // No state to give yet.
            return;
        }
        let chunk = match self.sm.read_checkpoint(offset, CHUNK_BYTES) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.counters.checkpoint_serve_errors += 1;
                warn!(node = self.node(), to = from, offset, error = %e, "cannot read checkpoint");
                return;
            }
        };
        let (log_start, system) = self.core.log_start();
        let msg = Message::CheckpointChunk {
            checkpoint: chunk.checkpoint,
            log_start,
            system: system.clone(),
            offset,
            data: chunk.data,
            done: chunk.done,
        };
        self.counters.checkpoint_chunks_served += 1;
        self.send(from, &msg);
    }

    /// Receiving side: one chunk arrived.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_checkpoint_chunk(
        &mut self,
        from: NodeId,
        checkpoint: InstanceId,
        log_start: InstanceId,
        system: SystemState,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) -> Result<(), RuntimeError> {
        let now = clock::now();
        let node = self.node();
        let Some(fetch) = self.fetch.as_mut() else {
            return Ok(()); // late chunk of an abandoned transfer
        };
        if from != fetch.peer || offset != fetch.next_offset {
            return Ok(()); // stale or duplicate
        }
        self.counters.checkpoint_chunks_received += 1;
        if fetch.checkpoint.is_some_and(|c| c != checkpoint) {
            // The source took a newer checkpoint: what we have is of no use.
            self.counters.checkpoint_fetch_restarts += 1;
            info!(
                node,
                peer = from,
                checkpoint,
                "source checkpoint moved on; restarting transfer"
            );
            fetch.checkpoint = None;
            fetch.next_offset = 0;
            fetch.last_progress = now;
            self.send(from, &Message::CheckpointRequest { offset: 0 });
            return Ok(());
        }
        let ours = self.sm.checkpoint();
        if checkpoint < log_start || checkpoint < ours || (data.is_empty() && !done) {
            warn!(
                node,
                peer = from,
                checkpoint,
                log_start,
                ours,
                len = data.len(),
                "unusable checkpoint chunk; abandoning transfer"
            );
            self.fail_fetch();
            return Ok(());
        }
        if done && !self.core.wants_checkpoint(log_start) {
            // We caught up by other means meanwhile: installing now would take the
            // log back. Drop the staged data (the next transfer starts at 0).
            info!(node, peer = from, log_start, "checkpoint no longer needed");
            self.fetch = None;
            self.core.checkpoint_fetch_failed();
            return Ok(());
        }
        fetch.checkpoint = Some(checkpoint);
        fetch.next_offset = offset + data.len() as u64;
        fetch.last_progress = now;
        let next_offset = fetch.next_offset;
        match self.sm.write_checkpoint(checkpoint, offset, &data, done) {
            Ok(()) => {}
            Err(e) if done => {
                // The state machine may be half-way into the new state.
                return Err(RuntimeError::StateMachine(format!(
                    "installing checkpoint {checkpoint} from node {from} failed: {e}"
                )));
            }
            Err(e) => {
                warn!(node, peer = from, offset, error = %e, "writing checkpoint chunk failed; abandoning transfer");
                self.fail_fetch();
                return Ok(());
            }
        }
        if !done {
            self.send(
                from,
                &Message::CheckpointRequest {
                    offset: next_offset,
                },
            );
            return Ok(());
        }
        self.fetch = None;
        self.counters.checkpoints_installed += 1;
        info!(
            node,
            peer = from,
            checkpoint,
            log_start,
            bytes = next_offset,
            "checkpoint installed"
        );
        // Cannot be refused: wants_checkpoint was checked before the swap above and
        // nothing ran in between.
        self.core
            .install_checkpoint(now, from, log_start, system, checkpoint);
        Ok(())
    }

    /// Abandons a transfer that stopped making progress.
    pub(super) fn check_fetch_stall(&mut self, now: Time) {
        if let Some(fetch) = &self.fetch
            && now >= fetch.last_progress + STALL_TIMEOUT
        {
            warn!(
                node = self.node(),
                peer = fetch.peer,
                offset = fetch.next_offset,
                "checkpoint transfer stalled"
            );
            self.fail_fetch();
        }
    }

    fn fail_fetch(&mut self) {
        self.fetch = None;
        self.counters.checkpoint_fetches_failed += 1;
        self.core.checkpoint_fetch_failed();
    }
}
