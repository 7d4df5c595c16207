//! What the proxy knows of the cluster, kept fresh by polling every binlog
//! server's admin API (`GET /route`, memory reads only on the server side).
//!
//! - The lease comes from the *local* binlog server only: it is a voter with
//!   its own conservative view, and a proxy cut off from it should not route
//!   writes anywhere. Its deadline is counted from when the question was
//!   sent, so the cached master never outlives the lease.
//! - Every node's report (role, MariaDB up, lag) feeds read routing and the
//!   "promotion done" check of the master.
//! - The master is published on a `watch` channel that changes only when
//!   the writable master changes (not on every poll), so that thousands of
//!   connections can wait on it cheaply; read-write connections close when
//!   it moves away from their backend.
//!
//! It also sends the local binlog server a heartbeat every second: without
//! one, that node does not campaign for the lease.
//!
//! The node list can change while it runs ([`Discovery::set_nodes`], when
//! the cluster file gains or loses a node): one poller per node, started
//! and stopped to match.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use phxsql_adminapi::{AdminClient, Method, StatusCode};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::route::{LeaseReport, NodeAddr, NodeReport, Topology};

/// How often each binlog server is asked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// One question's longest wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// A node that has not answered for this long has no report (not healthy).
const REPORT_TTL: Duration = Duration::from_secs(2);
/// How often the local binlog server hears that this proxy is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A node's admin API address and the token for mutating calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEndpoint {
    pub addr: String,
    pub token: String,
}

/// A node of the cluster file: where its MariaDB and its admin API are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub addr: NodeAddr,
    pub admin: AdminEndpoint,
}

/// The shared view (cheap to clone).
#[derive(Clone)]
pub struct Discovery {
    topology: Arc<Mutex<Topology>>,
    master: watch::Receiver<Option<NodeAddr>>,
    nodes: Arc<watch::Sender<Vec<ClusterNode>>>,
}

impl Discovery {
    /// Starts polling every node of `nodes` into `tasks`; `me` is this
    /// node's id (its binlog server gives the lease and the heartbeat goes
    /// to it).
    pub fn start(me: u64, nodes: Vec<ClusterNode>, tasks: &mut JoinSet<()>) -> Discovery {
        let addrs = nodes.iter().map(|n| n.addr.clone()).collect();
        let topology = Arc::new(Mutex::new(Topology::new(me, addrs)));
        let (master_tx, master) = watch::channel(None);
        let (tx, rx) = mpsc::channel(64);
        if let Some(local) = nodes.iter().find(|n| n.addr.id == me) {
            tasks.spawn(heartbeat(local.admin.clone()));
        }
        let (nodes_tx, nodes_rx) = watch::channel(nodes);
        tasks.spawn(pollers(me, nodes_rx, tx));
        tasks.spawn(publish(Arc::clone(&topology), rx, master_tx));
        Discovery {
            topology,
            master,
            nodes: Arc::new(nodes_tx),
        }
    }

    /// Replaces the node list: routing forgets removed nodes at once, new
    /// ones count once their binlog server answers.
    pub fn set_nodes(&self, nodes: Vec<ClusterNode>) {
        self.topology
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_nodes(nodes.iter().map(|n| n.addr.clone()).collect());
        self.nodes.send_replace(nodes);
    }

    /// The node list in use.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        self.nodes.borrow().clone()
    }

    /// A snapshot of everything routing reads.
    pub fn topology(&self) -> Topology {
        self.topology
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The writable master, changing only when it does.
    pub fn master(&self) -> watch::Receiver<Option<NodeAddr>> {
        self.master.clone()
    }
}

/// One answer (or failure) of one node.
struct Answer {
    /// The node as its poller knows it: an answer about a node that has
    /// since moved (a queued one from a stopped poller) is dropped.
    addr: NodeAddr,
    sent: Instant,
    route: Option<RouteJson>,
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one [`poll_node`] task per node of the current list (a node whose
/// admin address changed gets a new one).
async fn pollers(me: u64, mut nodes: watch::Receiver<Vec<ClusterNode>>, tx: mpsc::Sender<Answer>) {
    let mut running: HashMap<u64, (ClusterNode, AbortOnDrop)> = HashMap::new();
    loop {
        let want = nodes.borrow_and_update().clone();
        running.retain(|_, (node, _)| want.contains(node));
        for n in want {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(n.addr.id) {
                let task = tokio::spawn(poll_node(
                    n.addr.clone(),
                    n.addr.id == me,
                    n.admin.clone(),
                    tx.clone(),
                ));
                slot.insert((n, AbortOnDrop(task.abort_handle())));
            }
        }
        if nodes.changed().await.is_err() {
            // The Discovery is gone; keep the pollers until shutdown.
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Deserialize, Debug)]
struct RouteJson {
    lease: LeaseJson,
    agent: Option<AgentJson>,
}

#[derive(Deserialize, Debug)]
struct LeaseJson {
    master: Option<u64>,
    remaining_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
struct AgentJson {
    role: String,
    mariadb_up: bool,
    lag_ms: Option<u64>,
}

async fn poll_node(addr: NodeAddr, local: bool, endpoint: AdminEndpoint, tx: mpsc::Sender<Answer>) {
    let mut client = client(endpoint);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let route = match client.request(Method::GET, "/route", None).await {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<RouteJson>(&body) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(node = %client.addr(), error = %e, "unexpected /route answer");
                    None
                }
            },
            Ok((code, _)) => {
                if !failing {
                    tracing::warn!(node = %client.addr(), %code, "/route refused");
                }
                None
            }
            Err(e) => {
                if !failing {
                    if local {
                        tracing::warn!(admin = %client.addr(), error = %e, "the local binlog server does not answer: no writes are routed until it does");
                    } else {
                        tracing::info!(admin = %client.addr(), error = %e, "a binlog server does not answer");
                    }
                }
                None
            }
        };
        if failing && route.is_some() {
            tracing::info!(admin = %client.addr(), "binlog server answers again");
        }
        failing = route.is_none();
        let answer = Answer {
            addr: addr.clone(),
            sent,
            route,
        };
        if tx.send(answer).await.is_err() {
            return;
        }
    }
}

async fn heartbeat(endpoint: AdminEndpoint) {
    let mut client = client(endpoint);
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match client.request(Method::POST, "/proxy/heartbeat", None).await {
            Ok((code, _)) if code.is_success() => {}
            Ok((StatusCode::UNAUTHORIZED, _)) => {
                tracing::error!(
                    "the local binlog server refuses our heartbeat: the admin_api token differs"
                )
            }
            Ok((code, _)) => tracing::warn!(%code, "heartbeat refused"),
            Err(e) => tracing::debug!(error = %e, "heartbeat not delivered"),
        }
    }
}

/// Folds answers into the topology and publishes master changes; also
/// wakes on its own so that a lease ends on time when answers stop.
async fn publish(
    topology: Arc<Mutex<Topology>>,
    mut rx: mpsc::Receiver<Answer>,
    master_tx: watch::Sender<Option<NodeAddr>>,
) {
    // When each node (by id) last answered.
    let mut answered: HashMap<u64, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(POLL_INTERVAL / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let answer = tokio::select! {
            a = rx.recv() => match a {
                Some(a) => Some(a),
                None => return,
            },
            _ = tick.tick() => None,
        };
        let now = Instant::now();
        let master = {
            let mut t = topology.lock().unwrap_or_else(PoisonError::into_inner);
            // An answer from a node just removed from the list is dropped.
            let answer = answer
                .and_then(|a| t.index_of(a.addr.id).map(|i| (a, i)))
                .filter(|(a, i)| t.nodes[*i] == a.addr);
            if let Some((a, index)) = answer {
                let is_local = a.addr.id == t.me;
                if let Some(route) = a.route {
                    answered.insert(a.addr.id, now);
                    t.reports[index] = Some(match route.agent {
                        Some(ag) => NodeReport {
                            role: Some(ag.role),
                            mariadb_up: ag.mariadb_up,
                            lag_ms: ag.lag_ms,
                        },
                        // No agent: the role was set up by hand.
                        None => NodeReport {
                            role: None,
                            mariadb_up: true,
                            lag_ms: None,
                        },
                    });
                    if is_local {
                        t.lease = match (route.lease.master, route.lease.remaining_ms) {
                            (Some(master), Some(ms)) => Some(LeaseReport {
                                master,
                                until: a.sent + Duration::from_millis(ms),
                            }),
                            _ => None,
                        };
                    }
                }
            }
            for i in 0..t.nodes.len() {
                let id = t.nodes[i].id;
                if answered
                    .get(&id)
                    .is_none_or(|w| now.duration_since(*w) > REPORT_TTL)
                {
                    t.reports[i] = None;
                }
            }
            answered.retain(|id, _| t.index_of(*id).is_some());
            t.writable_master(now).cloned()
        };
        master_tx.send_if_modified(|current| {
            if *current == master {
                return false;
            }
            match &master {
                Some(m) => tracing::info!(master = %m.name, mariadb = %m.mariadb, "read-write port routes to a new master"),
                None => tracing::warn!("no writable master: new read-write connections wait"),
            }
            *current = master;
            true
        });
    }
}

fn client(endpoint: AdminEndpoint) -> AdminClient {
    AdminClient::new(endpoint.addr, Some(endpoint.token), REQUEST_TIMEOUT)
}
