//! The binlog server of one node, wired together: the Paxos node with the
//! [`BinlogStateMachine`] over the event store, the write path (active
//! while this node holds the lease), the replication master for the local
//! replica, and the admin HTTP API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = phxsql_config::ClusterConfig::load("cluster.yaml")?;
//! let server = phxbinlogsvr::server::Server::start(&cfg, "node1", Default::default()).await?;
//! server.wait().await?;
//! # Ok(()) }
//! ```
//!
//! Server ids: the binlog server appears to MariaDB with server id
//! [`BINLOG_SERVER_ID_BASE`] + node id (as the semi-sync replica of the
//! local master, and as the master of the local replica), far above the
//! ids the agent gives the MariaDB servers (`mariadb.server_id_base` + ...).

pub mod admin;
pub mod rebuild;
pub mod state_machine;
pub mod value;
pub mod write_path;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paxos::runtime::{Node, NodeConfig};
use paxos::{Membership, NodeHandle, SystemState};
use phxsql_config::ClusterConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use state_machine::{BinlogStateMachine, Progress, ProgressState};
pub use value::{
    ApplyOutcome, BinlogValue, DEFAULT_VALUE_BYTES, MAX_BATCH_BYTES, MAX_TRANSACTION_BYTES,
    MIN_VALUE_BYTES, PartValue, Value,
};
pub use write_path::{WriteMetrics, WritePath, WritePathConfig};

use crate::master::{MasterConfig, MasterHandle, MasterServer, Password};
use crate::semisync::SemiSyncConfig;
use crate::store::{EventStore, StoreOptions};

/// Server ids of binlog servers: this plus the node id (mod 10^8).
pub const BINLOG_SERVER_ID_BASE: u32 = 4_000_000_000;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(#[from] phxsql_config::ConfigError),
    #[error("event store at {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("Paxos node: {0}")]
    Paxos(#[from] paxos::RuntimeError),
    #[error("the Paxos node stopped: {0}")]
    PaxosStopped(Arc<paxos::RuntimeError>),
    #[error("replication master on {addr}: {source}")]
    Master {
        addr: SocketAddr,
        #[source]
        source: crate::master::MasterError,
    },
    #[error("admin API on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve the local MariaDB address {addr}: {reason}")]
    MariadbAddr { addr: String, reason: String },
    #[error("the local mariadbd: {0}")]
    Supervisor(agent::supervisor::SupervisorError),
}

/// Options not in the cluster file.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Never campaign for the master lease (testing / until the agent
    /// decides; the node still votes and follows).
    pub no_campaign: bool,
    /// The write path's per-value limit: transactions larger than this are
    /// split into parts (default [`DEFAULT_VALUE_BYTES`]; clamped to
    /// [`MIN_VALUE_BYTES`]..=[`MAX_TRANSACTION_BYTES`]).
    pub max_value_bytes: Option<usize>,
    /// The write path's most values in flight (default
    /// [`write_path::DEFAULT_MAX_INFLIGHT`]; at least 1).
    pub max_inflight: Option<usize>,
    /// Run the agent: the local MariaDB's role follows the lease (promote
    /// on winning it, demote on losing it), and the node campaigns only
    /// while its MariaDB is up and caught up with the chosen log.
    pub agent: bool,
    /// The agent runs the local `mariadbd` itself (see
    /// `agent::supervisor`); needs `agent`.
    pub supervise_mariadb: bool,
    /// With the agent: campaign without a live local proxy (no
    /// `phxsqlproxy` on this node sending heartbeats). Tests and set-ups
    /// whose clients reach MariaDB directly.
    pub without_proxy: bool,
}

/// How the agent runs this node's `mariadbd`, from the cluster file.
fn launch_config(cfg: &ClusterConfig, me: &phxsql_config::NodeConfig) -> agent::LaunchConfig {
    let binary = cfg.mariadb.binary.clone();
    // mariadb-install-db beside the server binary if it is there, else PATH.
    let install_db = binary
        .parent()
        .map(|d| d.join("mariadb-install-db"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "mariadb-install-db".into());
    let q = agent::mariadb::quote;
    let repl = &cfg.credentials.replication;
    let admin = &cfg.credentials.mariadb_admin;
    // FLUSH PRIVILEGES first: the bootstrap runs with the grant tables off,
    // which refuses CREATE USER.
    let init_sql = format!(
        "FLUSH PRIVILEGES;\n\
         CREATE USER {ru}@'%' IDENTIFIED BY {rp};\n\
         GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {ru}@'%';\n\
         CREATE USER {au}@'%' IDENTIFIED BY {ap};\n\
         GRANT ALL PRIVILEGES ON *.* TO {au}@'%' WITH GRANT OPTION;\n",
        ru = q(&repl.user),
        rp = q(repl.password.expose()),
        au = q(&admin.user),
        ap = q(admin.password.expose()),
    );
    agent::LaunchConfig {
        binary,
        install_db,
        datadir: me.mariadb_datadir.clone(),
        run_dir: me.data_dir.clone(),
        bind: me.bind,
        port: me.mariadb_port,
        server_id: agent::ServerIds::new(cfg.mariadb.server_id_base, me.id).replica,
        options: cfg
            .mariadb
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        init_sql,
        proxy_protocol_networks: if cfg.proxy.proxy_protocol {
            proxy_addresses(cfg)
        } else {
            Vec::new()
        },
    }
}

/// Where the cluster's proxies connect from: every node's address (a DNS
/// name resolved now) and listen address, and local socket connections.
/// The proxies do not bind their outgoing sockets, so on a host with several
/// addresses the one routing picks must be among these.
fn proxy_addresses(cfg: &ClusterConfig) -> Vec<String> {
    use std::net::ToSocketAddrs;
    let mut out = std::collections::BTreeSet::new();
    for n in &cfg.nodes {
        match n.host.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                out.insert(ip.to_string());
            }
            Err(_) => match (n.host.as_str(), 0).to_socket_addrs() {
                Ok(addrs) => out.extend(addrs.map(|a| a.ip().to_string())),
                Err(e) => {
                    tracing::warn!(host = %n.host, error = %e, "cannot resolve a node's host: its proxy's PROXY headers will be refused")
                }
            },
        }
        if !n.bind.is_unspecified() {
            out.insert(n.bind.to_string());
        }
    }
    out.insert("localhost".to_string());
    out.into_iter().collect()
}

/// How often the agent looks at the lease and the local MariaDB.
pub const AGENT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The agent's view of this binlog server.
struct AgentView {
    handle: NodeHandle<ApplyOutcome>,
    progress: Arc<Progress>,
    me: u64,
}

impl agent::ClusterView for AgentView {
    fn lease_version(&self) -> u64 {
        self.handle.lease_version()
    }

    fn lease(&self) -> agent::LeaseView {
        // `master()` is this node's conservative view (never past its own
        // lease end, nothing once a step-down was asked for).
        match self.handle.master() {
            Some((id, left)) if id == self.me => {
                let margin =
                    agent::fencing_margin(AGENT_POLL_INTERVAL, self.handle.lease_duration());
                if left > margin {
                    agent::LeaseView::Mine
                } else {
                    agent::LeaseView::Ending
                }
            }
            Some((id, _)) => agent::LeaseView::Other(id),
            None => agent::LeaseView::Vacant,
        }
    }

    fn chosen(&self) -> binlog::GtidPos {
        self.progress.snapshot().pos
    }
}

/// A running binlog server.
pub struct Server {
    pub handle: NodeHandle<ApplyOutcome>,
    pub progress: Arc<Progress>,
    pub write_metrics: Arc<WriteMetrics>,
    pub admin_addr: SocketAddr,
    pub binlog_addr: SocketAddr,
    master: Option<MasterHandle>,
    shutdown: watch::Sender<bool>,
    write_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    agent_task: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts every part of node `node` of `cfg`.
    pub async fn start(
        cfg: &ClusterConfig,
        node: &str,
        opts: ServerOptions,
    ) -> Result<Server, ServerError> {
        let me = cfg.node(node)?.clone();
        let server_id = BINLOG_SERVER_ID_BASE + (me.id % 100_000_000) as u32;

        // Event store and state machine.
        let store_dir = me.data_dir.join("store");
        let dir = store_dir.clone();
        let store =
            tokio::task::spawn_blocking(move || EventStore::open(&dir, StoreOptions::default()))
                .await
                .map_err(|_| paxos::RuntimeError::Panicked)?
                .map_err(|source| ServerError::Store {
                    path: store_dir.clone(),
                    source,
                })?
                .0;
        let mut sm = BinlogStateMachine::new(store);
        let progress = sm.progress();
        let gates = opts.agent.then(agent::Gates::default);
        if let Some(g) = &gates {
            sm.set_campaign_gate(Arc::clone(&g.may_campaign));
        }

        // Paxos node.
        let mut ncfg = NodeConfig::new(
            me.id,
            cfg.cluster_id,
            me.listen_addr(me.paxos_port),
            me.data_dir.clone(),
        );
        ncfg.core.lease_duration = cfg.lease.duration;
        ncfg.core.lease_drift = cfg.lease.drift;
        ncfg.core.lease_renew_interval = Some(cfg.lease.renew_interval);
        // A learner never campaigns (the core checks the current
        // membership), and campaigns once promoted to voter.
        ncfg.core.lease_enabled = !opts.no_campaign;
        let mut membership = Membership::new(cfg.initial_voters());
        for n in cfg.nodes.iter().filter(|n| !n.is_voter()) {
            membership.learners.insert(n.id, n.paxos_addr());
        }
        ncfg.initial = Some(SystemState {
            membership,
            ..SystemState::default()
        });
        let handle = Node::start(ncfg, sm).await?;
        tracing::info!(node = %me.name, id = me.id, paxos = %me.paxos_addr(), "Paxos node started");

        // Replication master for the local replica.
        let repl = &cfg.credentials.replication;
        let binlog_listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), me.binlog_port);
        let mcfg = MasterConfig::new(
            binlog_listen,
            repl.user.clone(),
            Password::new(repl.password.expose()),
            server_id,
        );
        let master = MasterServer::bind(mcfg, Arc::new(progress.reader().clone()))
            .await
            .map_err(|source| ServerError::Master {
                addr: binlog_listen,
                source,
            })?;
        let binlog_addr = master.local_addr();
        let master_metrics = master.metrics();
        let master = master.spawn();
        tracing::info!(addr = %binlog_addr, "replication master listening");

        // Write path.
        let mariadb_addr_text = me.mariadb_addr();
        let mariadb_addr = tokio::net::lookup_host(mariadb_addr_text.as_str())
            .await
            .map_err(|e| ServerError::MariadbAddr {
                addr: mariadb_addr_text.clone(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| ServerError::MariadbAddr {
                addr: mariadb_addr_text.clone(),
                reason: "no address".into(),
            })?;
        let ss = SemiSyncConfig::new(
            mariadb_addr,
            repl.user.clone(),
            repl.password.expose(),
            server_id,
        );
        let write_metrics = Arc::new(WriteMetrics::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut wcfg = WritePathConfig::new(ss);
        if let Some(v) = opts.max_value_bytes {
            wcfg.max_value_bytes = v.clamp(MIN_VALUE_BYTES, MAX_TRANSACTION_BYTES);
        }
        if let Some(n) = opts.max_inflight {
            wcfg.max_inflight = n.max(1);
        }
        let mut wp = WritePath::new(
            wcfg,
            handle.clone(),
            Arc::clone(&progress),
            Arc::clone(&write_metrics),
        );
        if let Some(g) = &gates {
            wp = wp.with_gate(Arc::clone(&g.write_path));
        }
        let write_task = tokio::spawn(wp.run(shutdown_rx.clone()));

        // Admin API.
        let admin = &cfg.credentials.mariadb_admin;
        let mariadb_opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(mariadb_addr.ip().to_string())
            .tcp_port(mariadb_addr.port())
            .user(Some(admin.user.clone()))
            .pass(Some(admin.password.expose().to_string()))
            .prefer_socket(false)
            .into();
        // The agent.
        let proxy_liveness = agent::ProxyLiveness::new(agent::PROXY_HEARTBEAT_TIMEOUT);
        let (agent_status, rebuilder, agent_task) = match gates {
            Some(gates) => {
                let local = agent::LocalMariaDb::new(
                    mariadb_opts.clone(),
                    agent::ReplicationSource {
                        host: binlog_addr.ip().to_string(),
                        port: binlog_addr.port(),
                        user: repl.user.clone(),
                        password: repl.password.expose().to_string(),
                    },
                );
                let view = AgentView {
                    handle: handle.clone(),
                    progress: Arc::clone(&progress),
                    me: me.id,
                };
                let a = agent::Agent::new(
                    view,
                    local,
                    binlog_addr.port(),
                    agent::ServerIds::new(cfg.mariadb.server_id_base, me.id),
                    gates,
                    AGENT_POLL_INTERVAL,
                );
                let a = if opts.without_proxy {
                    a
                } else {
                    a.with_proxy(proxy_liveness.clone())
                };
                let mut supervisor = None;
                let a = if opts.supervise_mariadb {
                    let sup = Arc::new(agent::Supervisor::new(launch_config(cfg, &me)));
                    supervisor = Some(Arc::clone(&sup));
                    let init = Arc::clone(&sup);
                    let initialised =
                        tokio::task::spawn_blocking(move || init.ensure_initialized())
                            .await
                            .map_err(|_| paxos::RuntimeError::Panicked)?
                            .map_err(ServerError::Supervisor)?;
                    if initialised {
                        tracing::info!(datadir = %me.mariadb_datadir.display(), "MariaDB data directory initialised");
                    }
                    a.with_supervisor(sup)
                } else {
                    a
                };
                let control = admin::AgentControl {
                    status: a.status(),
                    gates: a.gates(),
                    mariadb: a.mariadb().clone(),
                };
                let rebuilder = supervisor.map(|sup| {
                    Arc::new(rebuild::Rebuilder::new(
                        me.id,
                        cfg.nodes
                            .iter()
                            .map(|n| rebuild::Peer {
                                id: n.id,
                                name: n.name.clone(),
                                admin: n.admin_addr(),
                            })
                            .collect(),
                        cfg.credentials.admin_token.expose().to_string(),
                        me.mariadb_datadir.clone(),
                        a.gates(),
                        a.status(),
                        sup,
                        handle.clone(),
                    ))
                });
                (
                    Some(control),
                    rebuilder,
                    Some(tokio::spawn(a.run(shutdown_rx.clone()))),
                )
            }
            None => (None, None, None),
        };
        let state = Arc::new(admin::AdminState {
            cluster: cfg.name.clone(),
            node_name: me.name.clone(),
            node_id: me.id,
            names: cfg.nodes.iter().map(|n| (n.id, n.name.clone())).collect(),
            handle: handle.clone(),
            progress: Arc::clone(&progress),
            write: Arc::clone(&write_metrics),
            master: master_metrics,
            mariadb: mariadb_opts,
            agent: agent_status,
            proxy: proxy_liveness,
            token: cfg.credentials.admin_token.expose().to_string(),
            voters: cfg
                .nodes
                .iter()
                .filter(|n| n.is_voter())
                .map(|n| (n.id, format!("{}:{}", n.host, n.admin_port)))
                .collect(),
            backup_dir: me.data_dir.join("backup"),
            backup_busy: tokio::sync::Mutex::new(()),
            rebuild: rebuilder,
        });
        let admin_listen = me.listen_addr(me.admin_port);
        let listener = tokio::net::TcpListener::bind(admin_listen)
            .await
            .map_err(|source| ServerError::Admin {
                addr: admin_listen,
                source,
            })?;
        let admin_addr = listener.local_addr().map_err(|source| ServerError::Admin {
            addr: admin_listen,
            source,
        })?;
        let mut admin_shutdown = shutdown_rx;
        let admin_task = tokio::spawn(async move {
            let serve =
                axum::serve(listener, admin::router(state)).with_graceful_shutdown(async move {
                    let _ = admin_shutdown.wait_for(|s| *s).await;
                });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin API failed");
            }
        });
        tracing::info!(addr = %admin_addr, "admin API listening");

        Ok(Server {
            handle,
            progress,
            write_metrics,
            admin_addr,
            binlog_addr,
            master: Some(master),
            shutdown,
            write_task,
            admin_task,
            agent_task,
        })
    }

    /// Resolves when the Paxos node stops (an error if it failed).
    pub async fn wait(&self) -> Result<(), ServerError> {
        self.handle
            .stopped()
            .await
            .map_err(ServerError::PaxosStopped)
    }

    /// Stops everything: the write path (no more ACKs), the admin API, the
    /// replication master, then the Paxos node.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.write_task).await;
        self.write_task.abort();
        if let Some(mut t) = self.agent_task.take() {
            // It stops a supervised mariadbd cleanly, which takes a while.
            let _ = tokio::time::timeout(Duration::from_secs(90), &mut t).await;
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.admin_task).await;
        self.admin_task.abort();
        if let Some(m) = self.master.take() {
            m.shutdown().await;
        }
        self.handle.shutdown().await;
    }
}
