//! Replication master served to the local MariaDB replica.
//!
//! On every node that is not the master, the local `mariadbd` replicates
//! from this server on 127.0.0.1 (`CHANGE MASTER TO MASTER_HOST='127.0.0.1',
//! MASTER_PORT=..., MASTER_USE_GTID=slave_pos`). It speaks just enough of
//! the MySQL protocol for a MariaDB 10.11 replica: the connection phase with
//! `mysql_native_password` ([`handshake`]), the queries a replica sends
//! before its dump ([`conn`] lists them with their answers), and
//! COM_BINLOG_DUMP ([`dump`]): the chosen transactions from a
//! [`TransactionSource`], byte for byte, re-stamped into one continuous
//! virtual binlog file, then new ones as they are chosen, and heartbeats
//! while idle.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use phxbinlogsvr::master::{MasterConfig, MasterServer, MemorySource, Password};
//!
//! let source = Arc::new(MemorySource::new());
//! let cfg = MasterConfig::new("127.0.0.1:0".parse()?, "repl", Password::new("secret"), 4242);
//! let server = MasterServer::bind(cfg, Arc::clone(&source)).await?;
//! let handle = server.spawn();
//! println!("replicas connect to {}", handle.local_addr());
//! // ... source.append(transaction) as transactions are chosen ...
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Robustness: each connection is its own task; a malformed packet, a bad
//! password or a timeout ends that connection only. Nothing on the network
//! path panics or unwraps.

pub mod conn;
pub mod dump;
pub mod error;
pub mod handshake;
pub mod metrics;
pub mod packet;
pub mod query;
pub mod source;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use binlog::Checksum;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

pub use dump::{DumpEnd, DumpRequest};
pub use error::{ConnError, MasterError};
pub use metrics::{MasterMetrics, MasterStats};
pub use source::{LogIndex, MemorySource, SourceEntry, SourceError, TransactionSource, plan_start};

use metrics::{GaugeGuard, inc};
use packet::{PacketReader, PacketWriter, err_packet};

/// Largest client packet accepted (queries and commands are small; a bigger
/// one is hostile or broken and closes the connection).
const MAX_CLIENT_PACKET: usize = 1 << 20;

/// A password: kept out of `Debug` and logs.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(p: impl Into<String>) -> Self {
        Password(p.into())
    }

    /// The text, for the one place that needs it (the scramble check).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Settings of the replication master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Where to listen (127.0.0.1:port; port 0 picks one).
    pub listen: SocketAddr,
    /// The replication user the replica logs in as.
    pub user: String,
    /// Its password (`mysql_native_password`).
    pub password: Password,
    /// Our server_id: in `SHOW VARIABLES LIKE 'SERVER_ID'` and in the
    /// headers of the events we make. It must differ from the replica's
    /// (the replica refuses to replicate otherwise).
    pub server_id: u32,
    /// `@@GLOBAL.gtid_domain_id` as reported (default 0).
    pub gtid_domain_id: u32,
    /// Version string of the greeting and the FORMAT_DESCRIPTION. A MariaDB
    /// replica needs a leading `major >= 10` to replicate by GTID.
    pub server_version: String,
    /// Name of the virtual binlog file (ends with a number, which rotation
    /// increments).
    pub file_name: String,
    /// Rotate the virtual file once its position passes this (default
    /// 1 GiB, MariaDB's `max_binlog_size`).
    pub max_file_size: u32,
    /// `@@global.binlog_checksum` as reported, and the checksum of the
    /// stream (stored events are converted if theirs differs).
    pub checksum: Checksum,
    /// Heartbeat period for a replica that does not set
    /// `@master_heartbeat_period` (`None`: none, as MariaDB).
    pub default_heartbeat: Option<Duration>,
    /// Connections served at once; more get ERR 1040.
    pub max_connections: usize,
    /// Time allowed for the greeting and authentication.
    pub handshake_timeout: Duration,
    /// Idle time allowed between commands (not during a dump).
    pub idle_timeout: Duration,
    /// A replica that takes no bytes for this long is dropped (MariaDB's
    /// `net_write_timeout`).
    pub write_timeout: Duration,
    /// Bytes of transactions read from the source at a time.
    pub read_batch_bytes: usize,
    /// Send a GTID_LIST (the replica's connect state, or the stream's state
    /// at a rotation) after each FORMAT_DESCRIPTION. Off by default:
    /// MariaDB replicas do not need it.
    pub send_gtid_list: bool,
}

impl MasterConfig {
    /// The defaults, with the values every deployment sets.
    pub fn new(
        listen: SocketAddr,
        user: impl Into<String>,
        password: Password,
        server_id: u32,
    ) -> Self {
        MasterConfig {
            listen,
            user: user.into(),
            password,
            server_id,
            gtid_domain_id: 0,
            server_version: "10.11.0-MariaDB-phxsql".into(),
            file_name: "phxsql-bin.000001".into(),
            max_file_size: 1 << 30,
            checksum: Checksum::Crc32,
            default_heartbeat: Some(Duration::from_secs(30)),
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(60),
            read_batch_bytes: 1 << 20,
            send_gtid_list: false,
        }
    }

    fn check(&self) -> Result<(), MasterError> {
        let bad = |m: &str| Err(MasterError::Config(m.to_string()));
        let major: Option<u32> = self
            .server_version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|m| m.parse().ok());
        if major.is_none_or(|m| m < 10) {
            return bad(
                "server_version must start with a major version >= 10 (e.g. 10.11.0-MariaDB-phxsql), or MariaDB replicas fall back to non-GTID mode",
            );
        }
        if self.server_version.len() >= 50 {
            return bad("server_version must be shorter than 50 bytes (FORMAT_DESCRIPTION field)");
        }
        if self.server_id == 0 {
            return bad("server_id must not be 0");
        }
        if self.file_name.is_empty()
            || self.file_name.len() > 200
            || !self.file_name.ends_with(|c: char| c.is_ascii_digit())
        {
            return bad(
                "file_name must be a short name ending with a number, e.g. phxsql-bin.000001",
            );
        }
        if self.max_file_size < 4096 {
            return bad("max_file_size must be at least 4096");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.read_batch_bytes == 0 {
            return bad("read_batch_bytes must be at least 1");
        }
        Ok(())
    }
}

/// State shared by the accept loop and the connections.
pub(crate) struct Shared<S> {
    cfg: MasterConfig,
    source: Arc<S>,
    metrics: Arc<MasterMetrics>,
    /// Running dumps by replica server_id: (connection id, its stop signal).
    dumps: Mutex<HashMap<u32, (u32, Arc<Notify>)>>,
    next_conn_id: AtomicU32,
    slots: Arc<Semaphore>,
}

impl<S> Shared<S> {
    fn dumps(&self) -> MutexGuard<'_, HashMap<u32, (u32, Arc<Notify>)>> {
        self.dumps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stream_settings(&self) -> dump::StreamSettings {
        dump::StreamSettings {
            server_id: self.cfg.server_id,
            server_version: self.cfg.server_version.clone(),
            file_name: self.cfg.file_name.clone(),
            max_file_size: self.cfg.max_file_size,
            read_batch_bytes: self.cfg.read_batch_bytes,
            send_gtid_list: self.cfg.send_gtid_list,
            write_timeout: self.cfg.write_timeout,
        }
    }
}

/// The replication master: a bound listener, ready to run.
pub struct MasterServer<S: TransactionSource> {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared<S>>,
}

impl<S: TransactionSource> MasterServer<S> {
    /// Checks the configuration and opens the listening socket.
    pub async fn bind(cfg: MasterConfig, source: Arc<S>) -> Result<Self, MasterError> {
        cfg.check()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| MasterError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| MasterError::Bind {
            addr: cfg.listen,
            source,
        })?;
        tracing::info!(
            addr = %local_addr,
            server_id = cfg.server_id,
            file = %cfg.file_name,
            user = %cfg.user,
            "replication master listening"
        );
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        Ok(MasterServer {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                cfg,
                source,
                metrics: Arc::new(MasterMetrics::default()),
                dumps: Mutex::new(HashMap::new()),
                next_conn_id: AtomicU32::new(1),
                slots,
            }),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live counters.
    pub fn metrics(&self) -> Arc<MasterMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Serves until the process ends.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Serves until `shutdown` completes; then stops accepting and closes
    /// every connection.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!("a connection task panicked: {e}");
                    }
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = Arc::clone(&self.shared);
                        conns.spawn(async move { accept_one(shared, stream, peer).await });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off,
                        // then go on (mini-redis style).
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::info!(addr = %self.local_addr, "replication master stopping");
        conns.shutdown().await;
    }

    /// Runs on a tokio task; the handle stops it.
    pub fn spawn(self) -> MasterHandle {
        let (tx, rx) = oneshot::channel::<()>();
        let local_addr = self.local_addr;
        let metrics = self.metrics();
        let task = tokio::spawn(async move {
            self.run_until(async {
                let _ = rx.await;
            })
            .await;
        });
        MasterHandle {
            local_addr,
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

/// A running master: its address, counters, and the way to stop it.
/// Dropping the handle stops the server too.
#[derive(Debug)]
pub struct MasterHandle {
    local_addr: SocketAddr,
    metrics: Arc<MasterMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MasterHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live counters.
    pub fn metrics(&self) -> &Arc<MasterMetrics> {
        &self.metrics
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MasterStats {
        self.metrics.snapshot()
    }

    /// Stops accepting, closes every connection, and waits for that.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MasterHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// One accepted TCP connection: a slot, then [`conn::serve`].
async fn accept_one<S: TransactionSource>(
    shared: Arc<Shared<S>>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let metrics = Arc::clone(&shared.metrics);
    inc(&metrics.connections_accepted);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let Ok(_slot) = Arc::clone(&shared.slots).try_acquire_owned() else {
        inc(&metrics.connections_refused);
        tracing::warn!(%peer, "too many connections: refused with ERR 1040");
        // As mariadbd: an ERR instead of the greeting.
        let mut w = PacketWriter::new(&mut stream);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            w.write(&mut 0, &err_packet(1040, b"08004", "Too many connections"))
                .await?;
            w.flush().await
        })
        .await;
        let _ = stream.shutdown().await;
        return;
    };
    let _active = GaugeGuard::new(&metrics.connections_active);
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader =
        PacketReader::new(BufReader::new(r), MAX_CLIENT_PACKET).with_metrics(Arc::clone(&metrics));
    let mut writer = PacketWriter::new(BufWriter::with_capacity(64 * 1024, w))
        .with_metrics(Arc::clone(&metrics));
    tracing::debug!(conn = conn_id, %peer, "connection accepted");
    let result = conn::serve(&shared, conn_id, peer, &mut reader, &mut writer).await;
    match &result {
        Ok(()) => tracing::debug!(conn = conn_id, %peer, "connection closed"),
        Err(ConnError::AccessDenied { user }) => {
            inc(&metrics.auth_failures);
            inc(&metrics.err_packets_sent);
            tracing::warn!(conn = conn_id, %peer, %user, "access denied");
        }
        Err(e @ (ConnError::Protocol(_) | ConnError::Timeout(_))) => {
            inc(&metrics.protocol_errors);
            tracing::info!(conn = conn_id, %peer, "connection closed: {e}");
        }
        Err(e) => tracing::info!(conn = conn_id, %peer, "connection closed: {e}"),
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_and_hides_the_password() {
        let cfg = MasterConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "repl",
            Password::new("s3cret-pw"),
            7,
        );
        cfg.check().unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("***"));
        for bad in [
            MasterConfig {
                server_version: "5.7.1-x".into(),
                ..cfg.clone()
            },
            MasterConfig {
                server_version: "MariaDB-10.11".into(),
                ..cfg.clone()
            },
            MasterConfig {
                server_id: 0,
                ..cfg.clone()
            },
            MasterConfig {
                file_name: "binlog".into(),
                ..cfg.clone()
            },
            MasterConfig {
                max_connections: 0,
                ..cfg.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
