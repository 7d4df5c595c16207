//! Tokio tasks behind [`Transport`]: one accept loop, one reader task per
//! accepted connection and one writer task per peer.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::frame::{self, Decoded, FrameError};
use super::{Incoming, NodeId, TransportConfig, TransportStats};

/// Capacity of the channel handing received frames to the consumer. When it
/// is full, readers stop reading and TCP pushes back on the senders.
const INCOMING_QUEUE_LEN: usize = 4096;
/// Read buffer growth step for small frames; big frames reserve exactly.
const READ_CHUNK: usize = 16 * 1024;
const WRITE_BUFFER: usize = 64 * 1024;
/// Flush at least this often while the queue keeps refilling, so one busy
/// producer cannot postpone the flush indefinitely.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// doesn't spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A cheap-to-clone handle to a running transport. The transport shuts down
/// when [`Transport::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.inner.shared.cfg.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

/// Owned only by the handles, never by tasks, so dropping the last handle
/// runs `Drop` and stops the tasks.
struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Lets `set_peers` spawn writers from threads outside the runtime.
    runtime: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
}

/// State shared between the handle and the tasks.
struct Shared {
    cfg: TransportConfig,
    counters: Counters,
    peers: Mutex<PeerTable>,
}

struct PeerTable {
    /// Set by shutdown so that a racing `set_peers` spawns nothing.
    closed: bool,
    peers: HashMap<NodeId, Peer>,
}

struct Peer {
    addr: SocketAddr,
    queue: mpsc::Sender<Bytes>,
    /// Never sent on: dropping it (peer removed, shutdown) stops the writer.
    _alive: watch::Sender<bool>,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    dropped_foreign_cluster: AtomicU64,
    dropped_unknown_peer: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_no_route: AtomicU64,
    malformed_frames: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
}

/// Counters are independent statistics; no ordering with other memory needed.
fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: get(&self.frames_sent),
            frames_received: get(&self.frames_received),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            dropped_foreign_cluster: get(&self.dropped_foreign_cluster),
            dropped_unknown_peer: get(&self.dropped_unknown_peer),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_no_route: get(&self.dropped_no_route),
            malformed_frames: get(&self.malformed_frames),
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
        }
    }
}

impl Shared {
    /// The table is only touched in short non-async sections, so a poisoned
    /// lock can only come from a panic elsewhere; the data is still usable.
    fn peers(&self) -> MutexGuard<'_, PeerTable> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_known(&self, node: NodeId) -> bool {
        node == self.cfg.node_id || self.peers().peers.contains_key(&node)
    }
}

/// Resolves once a stop signal is raised or its sender is gone.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    async fn wait(&mut self) {
        // An error means the sender was dropped, which also means stop.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

impl Transport {
    /// Binds the listener and spawns the accept loop. Incoming frames from
    /// known peers are delivered on the receiver, which yields `None` once the
    /// transport has shut down and all its reader tasks have exited.
    pub async fn start(cfg: TransportConfig) -> io::Result<(Transport, mpsc::Receiver<Incoming>)> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let local_addr = listener.local_addr()?;
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE_LEN);
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            counters: Counters::default(),
            peers: Mutex::new(PeerTable {
                closed: false,
                peers: HashMap::new(),
            }),
        });
        info!(node = shared.cfg.node_id, %local_addr, "transport listening");
        tokio::spawn(accept_loop(
            Arc::clone(&shared),
            listener,
            incoming_tx,
            Stop(stop_rx),
        ));
        let inner = Inner {
            shared,
            local_addr,
            runtime: tokio::runtime::Handle::current(),
            stop: stop_tx,
        };
        Ok((
            Transport {
                inner: Arc::new(inner),
            },
            incoming_rx,
        ))
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Replaces the peer table (membership). Frames from node ids not in the
    /// table (other than self) are dropped and counted.
    ///
    /// Removed peers, and peers whose address changed, get their outbound
    /// connection closed and their queued frames discarded. New peers get a
    /// writer that dials eagerly, so the first message doesn't wait for a
    /// connect. Including our own id is allowed: we then dial ourselves.
    pub fn set_peers(&self, peers: HashMap<NodeId, SocketAddr>) {
        let shared = &self.inner.shared;
        let mut table = shared.peers();
        if table.closed {
            return;
        }
        // Dropping a `Peer` drops its `_alive` sender, which stops its writer.
        table
            .peers
            .retain(|id, peer| peers.get(id) == Some(&peer.addr));
        for (id, addr) in peers {
            if table.peers.contains_key(&id) {
                continue;
            }
            let (queue_tx, queue_rx) = mpsc::channel(shared.cfg.send_queue_len.max(1));
            let (alive_tx, alive_rx) = watch::channel(false);
            self.inner.runtime.spawn(run_writer(
                Arc::clone(shared),
                id,
                addr,
                queue_rx,
                Stop(alive_rx),
            ));
            table.peers.insert(
                id,
                Peer {
                    addr,
                    queue: queue_tx,
                    _alive: alive_tx,
                },
            );
        }
    }

    /// Non-blocking: enqueues `payload` for the peer's writer task. An unknown
    /// peer counts `dropped_no_route`, a full queue `dropped_queue_full`.
    /// A payload too big for `max_frame_bytes` is dropped with a warning.
    pub fn send(&self, to: NodeId, payload: Bytes) {
        let shared = &self.inner.shared;
        if frame::BODY_HEADER_LEN + payload.len() > shared.cfg.max_frame_bytes {
            // The receiver would reject it and drop the whole connection.
            warn!(
                to,
                len = payload.len(),
                max = shared.cfg.max_frame_bytes,
                "payload exceeds max_frame_bytes, not sent"
            );
            return;
        }
        let table = shared.peers();
        let Some(peer) = table.peers.get(&to) else {
            bump(&shared.counters.dropped_no_route, 1);
            return;
        };
        match peer.queue.try_send(payload) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => bump(&shared.counters.dropped_queue_full, 1),
            // Only possible while the transport is shutting down.
            Err(TrySendError::Closed(_)) => bump(&shared.counters.dropped_no_route, 1),
        }
    }

    pub fn stats(&self) -> TransportStats {
        self.inner.shared.counters.snapshot()
    }

    /// Closes the listener, all connections and tasks. Returns immediately;
    /// the tasks exit at their next await point.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        self.stop.send_replace(true);
        let mut table = self.shared.peers();
        table.closed = true;
        table.peers.clear();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------
// Inbound
// ---------------------------------------------------------------------------

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    incoming: mpsc::Sender<Incoming>,
    mut stop: Stop,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                debug!(node = shared.cfg.node_id, %remote, "accepted connection");
                tokio::spawn(run_reader(
                    Arc::clone(&shared),
                    stream,
                    remote,
                    incoming.clone(),
                    stop.clone(),
                ));
            }
            Err(e) => {
                warn!(node = shared.cfg.node_id, error = %e, "accept failed");
                tokio::select! {
                    _ = stop.wait() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    debug!(node = shared.cfg.node_id, "accept loop stopped");
    // The listener is dropped here, freeing the port.
}

/// Why a reader closed its connection.
enum Close {
    Eof,
    Io(io::Error),
    Malformed(FrameError),
    ForeignCluster(u64),
    /// The consumer dropped the receiver; nothing left to deliver to.
    ConsumerGone,
}

async fn run_reader(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    incoming: mpsc::Sender<Incoming>,
    mut stop: Stop,
) {
    let node = shared.cfg.node_id;
    let close = tokio::select! {
        _ = stop.wait() => return,
        close = serve(&shared, stream, &incoming) => close,
    };
    let c = &shared.counters;
    match close {
        Close::Eof => debug!(node, %remote, "inbound connection closed by peer"),
        Close::Io(e) => debug!(node, %remote, error = %e, "inbound connection failed"),
        Close::Malformed(e) => {
            bump(&c.malformed_frames, 1);
            warn!(node, %remote, error = %e, "malformed frame, closing connection");
        }
        Close::ForeignCluster(cluster) => {
            bump(&c.dropped_foreign_cluster, 1);
            warn!(
                node,
                %remote,
                cluster,
                ours = shared.cfg.cluster_id,
                "frame from a foreign cluster, closing connection"
            );
        }
        Close::ConsumerGone => debug!(node, %remote, "receiver dropped, closing connection"),
    }
    // The stream is dropped (closed) when `serve` returns.
}

/// Reads frames until the connection must be closed. Cancel-safe at every
/// await, so the caller can abort it on shutdown.
async fn serve(shared: &Shared, mut stream: TcpStream, incoming: &mpsc::Sender<Incoming>) -> Close {
    let cfg = &shared.cfg;
    let c = &shared.counters;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let frame = match frame::decode(&mut buf, cfg.max_frame_bytes) {
            Ok(Decoded::Frame(frame)) => frame,
            Ok(Decoded::NeedMore(n)) => {
                // Reserving the rest of a large frame at once avoids repeated
                // reallocation and copying; `decode` already bounded it by
                // max_frame_bytes, which thus caps memory per connection.
                buf.reserve(n.max(READ_CHUNK));
                match stream.read_buf(&mut buf).await {
                    Ok(0) if buf.is_empty() => return Close::Eof,
                    Ok(0) => return Close::Malformed(FrameError::Truncated(buf.len())),
                    Ok(_) => continue,
                    Err(e) => return Close::Io(e),
                }
            }
            Err(e) => return Close::Malformed(e),
        };

        bump(&c.frames_received, 1);
        bump(&c.bytes_received, frame.wire_len() as u64);
        if frame.cluster_id != cfg.cluster_id {
            return Close::ForeignCluster(frame.cluster_id);
        }
        if !shared.is_known(frame.from) {
            bump(&c.dropped_unknown_peer, 1);
            debug!(
                node = cfg.node_id,
                from = frame.from,
                "frame from unknown peer dropped"
            );
            continue;
        }
        let msg = Incoming {
            from: frame.from,
            payload: frame.payload,
        };
        if incoming.send(msg).await.is_err() {
            return Close::ConsumerGone;
        }
    }
}

// ---------------------------------------------------------------------------
// Outbound
// ---------------------------------------------------------------------------

/// Exponential backoff with "equal jitter": each delay is drawn from
/// [d/2, d] where d doubles per failure from `min` up to `max`, so peers that
/// lost the same node don't all redial in lockstep.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            current: min,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        let half = d / 2;
        let jitter = if half.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rand::random_range(0..=half.as_nanos() as u64))
        };
        (half + jitter).max(self.min)
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Why `pump` returned.
enum PumpEnd {
    Stopped,
    Broken(io::Error),
}

async fn run_writer(
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
    mut stop: Stop,
) {
    let cfg = &shared.cfg;
    let c = &shared.counters;
    let node = cfg.node_id;
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    loop {
        let dial = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr));
        let dialed = tokio::select! {
            _ = stop.wait() => break,
            dialed = dial => dialed,
        };
        match dialed {
            Ok(Ok(stream)) => {
                bump(&c.connects, 1);
                debug!(node, peer, %addr, "connected");
                // Batching happens in the BufWriter; Nagle would only add latency.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(node, peer, error = %e, "set_nodelay failed");
                }
                let since = Instant::now();
                match pump(&shared, peer, stream, &mut queue, &mut stop).await {
                    PumpEnd::Stopped => break,
                    PumpEnd::Broken(e) => debug!(node, peer, %addr, error = %e, "connection lost"),
                }
                // Only a connection that lasted resets the backoff, so a peer
                // that accepts and immediately hangs up is not redialled in a
                // tight loop.
                if since.elapsed() >= cfg.reconnect_max {
                    backoff.reset();
                }
            }
            Ok(Err(e)) => {
                bump(&c.connect_failures, 1);
                debug!(node, peer, %addr, error = %e, "connect failed");
            }
            Err(_elapsed) => {
                bump(&c.connect_failures, 1);
                debug!(node, peer, %addr, "connect timed out");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    debug!(node, peer, "writer stopped");
}

/// Moves frames from the queue to one connection until it breaks or the
/// writer is stopped.
async fn pump(
    shared: &Shared,
    peer: NodeId,
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Bytes>,
    stop: &mut Stop,
) -> PumpEnd {
    let (mut read_half, write_half) = stream.into_split();
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, write_half);
    // The peer never writes on this connection; reading only serves to notice
    // promptly that it closed, so we redial before the next frame is lost
    // into a dead socket.
    let mut probe = [0u8; 64];
    loop {
        let first = tokio::select! {
            _ = stop.wait() => return PumpEnd::Stopped,
            next = queue.recv() => match next {
                Some(payload) => payload,
                None => return PumpEnd::Stopped,
            },
            read = read_half.read(&mut probe) => match read {
                Ok(0) => {
                    return PumpEnd::Broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed by peer",
                    ));
                }
                // Unexpected data; ignore it rather than guess at its meaning.
                Ok(_) => continue,
                Err(e) => return PumpEnd::Broken(e),
            },
        };
        // A stalled peer can block writes forever, so stay responsive to stop.
        let written = tokio::select! {
            _ = stop.wait() => return PumpEnd::Stopped,
            written = write_batch(shared, peer, &mut writer, queue, first) => written,
        };
        if let Err(e) = written {
            return PumpEnd::Broken(e);
        }
    }
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    shared: &Shared,
    peer: NodeId,
    writer: &mut BufWriter<OwnedWriteHalf>,
    queue: &mut mpsc::Receiver<Bytes>,
    first: Bytes,
) -> io::Result<()> {
    let cfg = &shared.cfg;
    let mut frames = 0u64;
    let mut bytes = 0usize;
    let mut next = Some(first);
    while let Some(payload) = next {
        let header = match frame::encode_header(cfg.cluster_id, cfg.node_id, &payload) {
            Ok(header) => header,
            Err(e) => {
                // `send` already filters oversized payloads; be safe anyway.
                warn!(node = cfg.node_id, peer, error = %e, "cannot frame payload");
                next = queue.try_recv().ok();
                continue;
            }
        };
        writer.write_all(&header).await?;
        // Payloads larger than the buffer go straight to the socket uncopied.
        writer.write_all(&payload).await?;
        frames += 1;
        bytes += header.len() + payload.len();
        next = if bytes < MAX_BATCH_BYTES {
            queue.try_recv().ok()
        } else {
            None
        };
    }
    writer.flush().await?;
    bump(&shared.counters.frames_sent, frames);
    bump(&shared.counters.bytes_sent, bytes as u64);
    Ok(())
}
