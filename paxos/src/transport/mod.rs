//! TCP message transport between cluster nodes.
//!
//! Carries opaque payloads (already-encoded Paxos messages) between nodes
//! identified by [`NodeId`]. Delivery is best effort: frames may be lost when
//! a connection breaks or a queue is full, and the consensus protocol is
//! expected to retransmit. Frames that do arrive from one sender to one
//! receiver arrive in the order they were sent.
//!
//! # Connections
//!
//! Each node dials one outbound TCP connection per peer and only *writes* on
//! it; it only *reads* on connections it accepted. So every direction of a
//! node pair uses its own connection, which avoids any handshake or
//! connection-deduplication logic (the PhxPaxos approach).
//!
//! * [`Transport::send`] never blocks: it pushes onto the peer's bounded queue
//!   (dropping and counting when full). A per-peer writer task drains whatever
//!   is queued into a `BufWriter` and flushes once per batch; `TCP_NODELAY` is
//!   set because batching already happens in user space.
//! * The writer reconnects with exponential backoff plus jitter between
//!   `reconnect_min` and `reconnect_max`; frames queued meanwhile wait.
//! * One reader task per accepted connection decodes frames and delivers
//!   those from known peers (and from ourselves) on the channel returned by
//!   [`Transport::start`]. It applies backpressure: if that channel is full
//!   the reader stops reading and TCP flow control slows the sender down.
//!
//! # Wire format
//!
//! A connection carries a sequence of frames, all integers little endian:
//!
//! ```text
//! u32 body_len | u64 cluster_id | u64 from_node | u32 crc32 | payload
//! ```
//!
//! `body_len` counts every byte after itself (`20 + payload.len()`);
//! `crc32` (the `crc32fast` CRC-32) covers `cluster_id`, `from_node` and
//! `payload` in wire order. There is no handshake; every frame names its
//! sender.
//!
//! A receiver closes a connection on the first malformed frame (body_len
//! under 20 or above [`TransportConfig::max_frame_bytes`], checksum mismatch,
//! EOF mid-frame) and on the first frame with a foreign `cluster_id`. Frames
//! from node ids missing from the peer table are dropped but the connection
//! is kept, since membership may still be catching up.
//!
//! Everything is counted in [`TransportStats`].

pub mod frame;
mod tcp;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

pub use tcp::Transport;

/// Identifies a node within a cluster.
pub type NodeId = u64;

/// Default limit on a frame's `body_len`: a 64 MiB value plus room for the
/// message envelope around it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024 + 64 * 1024;

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Frames carrying another cluster id are rejected.
    pub cluster_id: u64,
    /// Stamped on every frame we send.
    pub node_id: NodeId,
    /// Address to listen on; port 0 picks a free port (see
    /// [`Transport::local_addr`]).
    pub listen: SocketAddr,
    /// Largest accepted `body_len`; a larger length field is malformed.
    /// Payloads that would exceed it are not sent.
    pub max_frame_bytes: usize,
    /// Frames queued per peer; when full, new frames are dropped and counted.
    pub send_queue_len: usize,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Cap of the exponentially growing reconnect delay.
    pub reconnect_max: Duration,
    /// Give up on a dial attempt after this long.
    pub connect_timeout: Duration,
}

impl TransportConfig {
    pub fn new(cluster_id: u64, node_id: NodeId, listen: SocketAddr) -> Self {
        TransportConfig {
            cluster_id,
            node_id,
            listen,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            send_queue_len: 4096,
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// A payload received from a peer.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub from: NodeId,
    pub payload: Bytes,
}

/// Counters, all monotonically increasing; exported as metrics by the binaries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TransportStats {
    /// Frames written and flushed to an outbound connection.
    pub frames_sent: u64,
    /// Well-formed frames read from accepted connections (including those
    /// then dropped as foreign or from an unknown peer).
    pub frames_received: u64,
    /// Wire bytes (header included) of `frames_sent`.
    pub bytes_sent: u64,
    /// Wire bytes (header included) of `frames_received`.
    pub bytes_received: u64,
    /// Frames with another cluster id (their connection is closed).
    pub dropped_foreign_cluster: u64,
    /// Frames from a node id not in the peer table.
    pub dropped_unknown_peer: u64,
    /// `send` calls that found the peer's queue full.
    pub dropped_queue_full: u64,
    /// `send` calls to a node id not in the peer table.
    pub dropped_no_route: u64,
    /// Connections closed because of an undecodable frame.
    pub malformed_frames: u64,
    /// Successful outbound dials.
    pub connects: u64,
    /// Failed or timed-out outbound dials.
    pub connect_failures: u64,
}
