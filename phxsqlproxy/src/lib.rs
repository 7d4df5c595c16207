//! `phxsqlproxy`: every node's MySQL front door.
//!
//! - The **read-write port** connects each client straight to the current
//!   master's MariaDB (one hop, whichever node the client picked), and
//!   closes those connections when the master changes. While no master is
//!   known (an election), a new connection waits up to
//!   `proxy.master_wait_timeout`, then gets a MySQL error packet.
//! - The **read-only port** connects to this node's MariaDB, or, when it is
//!   down or lags beyond `proxy.ro_max_lag`, to the healthiest other node.
//!
//! Once routed, a connection is relayed byte for byte ([`relay`]): the
//! proxy takes no part in the MySQL conversation (TLS is end to end), and
//! it starts the backend connection with a PROXY protocol v2 header so that
//! MariaDB sees, checks and logs the client's own address.
//!
//! Layout: [`route`] decides (pure), [`discovery`] keeps the cluster view
//! fresh from the binlog servers' admin APIs, [`relay`] moves bytes,
//! [`errpacket`] is the only packet the proxy writes, [`metrics`] counts.

pub mod discovery;
pub mod errpacket;
pub mod metrics;
pub mod relay;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use phxsql_config::{ClusterConfig, ProxyConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::discovery::{AdminEndpoint, ClusterNode, Discovery};
use crate::errpacket::{ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN, error_packet};
use crate::metrics::{Metrics, Port};
use crate::relay::{Moved, RelayEnd, relay, write_all};
use crate::route::{NodeAddr, ReadPolicy};

/// What can stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] phxsql_config::ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("a proxy task ended unexpectedly")]
    TaskEnded,
    #[error("node {node} now has id {now} in the cluster file (was {was}): restart the proxy")]
    NodeChanged { node: String, was: u64, now: u64 },
    #[error(
        "node {node}'s own admin address or the admin token changed in the cluster file: restart the proxy"
    )]
    OwnNodeChanged { node: String },
}

/// Everything a connection needs.
struct Shared {
    cluster: String,
    node: String,
    settings: ProxyConfig,
    read_policy: ReadPolicy,
    discovery: Discovery,
    metrics: Metrics,
    limit: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// A running proxy.
pub struct Proxy {
    /// Where it listens (the ports may have been 0 in tests).
    pub rw_addr: SocketAddr,
    pub ro_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    reloader: Reloader,
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
}

/// Every node of the cluster file, as discovery polls and routing uses it.
fn cluster_nodes(cfg: &ClusterConfig) -> Vec<ClusterNode> {
    cfg.nodes
        .iter()
        .map(|n| ClusterNode {
            addr: NodeAddr {
                id: n.id,
                name: n.name.clone(),
                mariadb: n.mariadb_addr(),
            },
            admin: AdminEndpoint {
                addr: n.admin_addr(),
                token: cfg.credentials.admin_token.expose().to_string(),
            },
        })
        .collect()
}

/// Takes a new version of the cluster file's node list (nodes added with
/// `phxctl member add`, removed, or moved) without a restart. Everything
/// else in the file (this node's ports, `proxy.*`) needs a restart.
#[derive(Clone)]
pub struct Reloader {
    node: String,
    id: u64,
    discovery: Discovery,
}

impl Reloader {
    /// Uses `cfg`'s node list from now on; `Ok(false)` if it did not change.
    /// The file must still describe this node, with the same id.
    pub fn apply(&self, cfg: &ClusterConfig) -> Result<bool, ProxyError> {
        let me = cfg.node(&self.node)?;
        if me.id != self.id {
            return Err(ProxyError::NodeChanged {
                node: self.node.clone(),
                was: self.id,
                now: me.id,
            });
        }
        let nodes = cluster_nodes(cfg);
        let current = self.discovery.nodes();
        if nodes == current {
            return Ok(false);
        }
        // The heartbeat goes to this node's binlog server as it was at the
        // start: moving that needs a restart.
        let own = |list: &[ClusterNode]| list.iter().find(|n| n.addr.id == self.id).cloned();
        if own(&nodes).map(|n| n.admin) != own(&current).map(|n| n.admin) {
            return Err(ProxyError::OwnNodeChanged {
                node: self.node.clone(),
            });
        }
        let names: Vec<&str> = nodes.iter().map(|n| n.addr.name.as_str()).collect();
        tracing::info!(nodes = ?names, "cluster file changed: new node list");
        self.discovery.set_nodes(nodes);
        Ok(true)
    }
}

impl Proxy {
    /// Starts node `node`'s proxy as `cfg` describes it.
    pub async fn start(cfg: &ClusterConfig, node: &str) -> Result<Proxy, ProxyError> {
        let me = cfg.node(node)?.clone();
        raise_fd_limit(cfg.proxy.max_connections);
        let listen = |port: u16, what: &'static str| {
            let addr = me.listen_addr(port);
            async move {
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ProxyError::Listen { addr, what, source })
            }
        };
        let rw = listen(me.proxy_rw_port, "read-write port").await?;
        let ro = listen(me.proxy_ro_port, "read-only port").await?;
        let admin = listen(me.proxy_admin_port, "proxy admin port").await?;
        let addr_of = |l: &TcpListener, what| {
            l.local_addr().map_err(|source| ProxyError::Listen {
                addr: me.listen_addr(0),
                what,
                source,
            })
        };
        let (rw_addr, ro_addr, admin_addr) = (
            addr_of(&rw, "read-write port")?,
            addr_of(&ro, "read-only port")?,
            addr_of(&admin, "proxy admin port")?,
        );

        let mut tasks = JoinSet::new();
        let discovery = Discovery::start(me.id, cluster_nodes(cfg), &mut tasks);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cluster: cfg.name.clone(),
            node: me.name.clone(),
            settings: cfg.proxy.clone(),
            read_policy: ReadPolicy {
                max_lag: cfg.proxy.ro_max_lag,
                include_master: cfg.proxy.ro_include_master,
            },
            discovery,
            metrics: Metrics::default(),
            limit: Arc::new(Semaphore::new(cfg.proxy.max_connections as usize)),
            shutdown: shutdown_rx,
        });
        tasks.spawn(accept_loop(rw, Port::ReadWrite, Arc::clone(&shared)));
        tasks.spawn(accept_loop(ro, Port::ReadOnly, Arc::clone(&shared)));
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/status", get(status_page))
            .with_state(Arc::clone(&shared));
        tasks.spawn(async move {
            if let Err(e) = axum::serve(admin, app).await {
                tracing::error!(error = %e, "proxy admin API stopped");
            }
        });
        tracing::info!(%rw_addr, %ro_addr, %admin_addr, node = %me.name, "phxsqlproxy listening");
        Ok(Proxy {
            rw_addr,
            ro_addr,
            admin_addr,
            reloader: Reloader {
                node: me.name.clone(),
                id: me.id,
                discovery: shared.discovery.clone(),
            },
            tasks,
            shutdown,
        })
    }

    /// Applies a changed cluster file's node list to the running proxy.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Returns when one of the proxy's tasks ends (none should).
    pub async fn wait(&mut self) -> Result<(), ProxyError> {
        match self.tasks.join_next().await {
            Some(_) | None => Err(ProxyError::TaskEnded),
        }
    }

    /// Stops listening and closes every client connection.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.shutdown().await;
    }
}

/// Two descriptors per client connection, plus slack: raise the soft limit
/// as far as the hard limit allows, and say so when that is not enough.
fn raise_fd_limit(max_connections: u32) {
    let wanted = 2 * u64::from(max_connections) + 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(got) if got < wanted => tracing::warn!(
            limit = got,
            wanted,
            "the open-files limit is below what proxy.max_connections needs; raise it (ulimit -n / LimitNOFILE)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn accept_loop(listener: TcpListener, port: Port, shared: Arc<Shared>) {
    let m = shared.metrics.port(port);
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, usually: back off instead of spinning.
                    tracing::warn!(port = port.label(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        m.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        match Arc::clone(&shared.limit).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(serve(Arc::clone(&shared), port, client, peer, permit));
            }
            Err(_) => {
                m.rejected_limit.fetch_add(1, Ordering::Relaxed);
                let max = shared.settings.max_connections;
                tokio::spawn(refuse(
                    client,
                    ER_CON_COUNT_ERROR,
                    format!("Too many connections (phxsqlproxy max_connections = {max})"),
                ));
            }
        }
    }
}

/// Sends an error packet in place of the greeting and closes.
async fn refuse(client: TcpStream, code: u16, message: String) {
    let packet = error_packet(code, &message);
    let _ = tokio::time::timeout(Duration::from_secs(1), write_all(&client, &packet)).await;
}

/// Decrements `active` however the connection ends.
struct Active<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(
    shared: Arc<Shared>,
    port: Port,
    client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let m = shared.metrics.port(port);
    m.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(&m.active);

    let target = match port {
        Port::ReadWrite => wait_for_master(&shared).await,
        Port::ReadOnly => shared
            .discovery
            .topology()
            .read_target(&shared.read_policy, Instant::now())
            .cloned()
            .ok_or_else(|| {
                "phxsqlproxy: no healthy replica to read from (all down or lagging beyond proxy.ro_max_lag)"
                    .to_string()
            }),
    };
    let target = match target {
        Ok(t) => t,
        Err(message) => {
            m.routing_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, port = port.label(), "{message}");
            return refuse(client, ER_SERVER_SHUTDOWN, message).await;
        }
    };
    let server = match connect_backend(&shared, &target, &client, peer).await {
        Ok(s) => s,
        Err(message) => {
            m.routing_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, port = port.label(), "{message}");
            return refuse(client, ER_SERVER_SHUTDOWN, message).await;
        }
    };

    let mut shutdown = shared.shutdown.clone();
    let mut master = shared.discovery.master();
    let stop = async {
        match port {
            // Closed when the master moves away from this backend (or
            // there is none): its MariaDB may no longer take writes.
            Port::ReadWrite => tokio::select! {
                _ = master.wait_for(|m| m.as_ref() != Some(&target)) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            },
            Port::ReadOnly => {
                let _ = shutdown.wait_for(|s| *s).await;
            }
        }
    };
    let moved = Moved::default();
    let end = relay(&client, &server, shared.settings.idle_timeout, stop, &moved).await;
    m.bytes_to_server
        .fetch_add(moved.to_server.load(Ordering::Relaxed), Ordering::Relaxed);
    m.bytes_to_client
        .fetch_add(moved.to_client.load(Ordering::Relaxed), Ordering::Relaxed);
    match end {
        RelayEnd::Stopped if port == Port::ReadWrite => {
            m.closed_master_changed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, backend = %target.name, "closed: the master changed");
        }
        RelayEnd::Idle => {
            m.closed_idle.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// The master, waiting for one up to `proxy.master_wait_timeout`.
async fn wait_for_master(shared: &Shared) -> Result<NodeAddr, String> {
    let mut master = shared.discovery.master();
    let wait = shared.settings.master_wait_timeout;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Decided on the live view, not the published one (which may be up
        // to a publishing tick old): a lease that has just ended is never
        // routed to.
        if let Some(m) = shared.discovery.topology().writable_master(Instant::now()) {
            return Ok(m.clone());
        }
        match tokio::time::timeout_at(deadline, master.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err("phxsqlproxy is shutting down".to_string()),
            Err(_) => {
                return Err(format!(
                    "phxsqlproxy: no master elected within {wait:?} (an election is under way, or this node cannot reach its binlog server); retry"
                ));
            }
        }
    }
}

/// Connects to `target`'s MariaDB within the connect timeout and sends the
/// PROXY header naming the client.
async fn connect_backend(
    shared: &Shared,
    target: &NodeAddr,
    client: &TcpStream,
    peer: SocketAddr,
) -> Result<TcpStream, String> {
    let timeout = shared.settings.connect_timeout;
    let server = match tokio::time::timeout(timeout, TcpStream::connect(&target.mariadb)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(format!(
                "phxsqlproxy: cannot connect to {} ({}): {e}",
                target.name, target.mariadb
            ));
        }
        Err(_) => {
            return Err(format!(
                "phxsqlproxy: connecting to {} ({}) timed out after {timeout:?}",
                target.name, target.mariadb
            ));
        }
    };
    let _ = server.set_nodelay(true);
    if shared.settings.proxy_protocol {
        let local = client
            .local_addr()
            .map_err(|e| format!("phxsqlproxy: {e}"))?;
        let header = proxy_header(peer, local)?;
        write_all(&server, &header)
            .await
            .map_err(|e| format!("phxsqlproxy: writing to {}: {e}", target.name))?;
    }
    Ok(server)
}

/// A PROXY protocol v2 header: TCP from `client` to `local` (the proxy port
/// the client reached).
fn proxy_header(client: SocketAddr, local: SocketAddr) -> Result<Vec<u8>, String> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    // Both addresses of one family: a v4 client on a v6 socket is mapped.
    let (src, dst) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        (SocketAddr::V6(c), SocketAddr::V4(l)) => (
            SocketAddr::V6(c),
            SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port()),
        ),
        (SocketAddr::V4(c), SocketAddr::V6(l)) => (
            SocketAddr::new(c.ip().to_ipv6_mapped().into(), c.port()),
            SocketAddr::V6(l),
        ),
    };
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
        .build()
        .map_err(|e| format!("phxsqlproxy: PROXY header: {e}"))
}

async fn metrics_page(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&s.cluster, &s.node),
    )
}

/// `GET /status`: where the ports route now, and what each node reported.
async fn status_page(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let now = Instant::now();
    let t = s.discovery.topology();
    let nodes: Vec<serde_json::Value> = t
        .nodes
        .iter()
        .zip(&t.reports)
        .map(|(n, r)| {
            serde_json::json!({
                "name": n.name,
                "mariadb": n.mariadb,
                "answering": r.is_some(),
                "role": r.as_ref().and_then(|r| r.role.clone()),
                "mariadb_up": r.as_ref().map(|r| r.mariadb_up),
                "lag_ms": r.as_ref().and_then(|r| r.lag_ms),
            })
        })
        .collect();
    let body = serde_json::json!({
        "node": s.node,
        "rw_target": t.writable_master(now).map(|n| n.name.clone()),
        "ro_target": t.read_target(&s.read_policy, now).map(|n| n.name.clone()),
        "connections": {
            "rw": s.metrics.rw.active.load(Ordering::Relaxed),
            "ro": s.metrics.ro.active.load(Ordering::Relaxed),
        },
        "nodes": nodes,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proxy_header_names_the_client() {
        let h = proxy_header(
            "10.1.2.3:4567".parse().unwrap(),
            "127.0.0.1:17003".parse().unwrap(),
        )
        .unwrap();
        // Signature, version 2 / PROXY, TCP over IPv4, 12 address bytes.
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 4567);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 17003);
    }
}
