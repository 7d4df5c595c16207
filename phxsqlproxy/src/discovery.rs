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
#[derive(Debug, Clone)]
pub struct AdminEndpoint {
    pub addr: String,
    pub token: String,
}

/// The shared view (cheap to clone).
#[derive(Clone)]
pub struct Discovery {
    topology: Arc<Mutex<Topology>>,
    master: watch::Receiver<Option<NodeAddr>>,
}

impl Discovery {
    /// Starts polling `admins` (same order as `topology.nodes`) into
    /// `tasks`; `local` indexes this node.
    pub fn start(
        topology: Topology,
        admins: Vec<AdminEndpoint>,
        local: usize,
        tasks: &mut JoinSet<()>,
    ) -> Discovery {
        let topology = Arc::new(Mutex::new(topology));
        let (master_tx, master) = watch::channel(None);
        let (tx, rx) = mpsc::channel(64);
        for (index, endpoint) in admins.iter().enumerate() {
            tasks.spawn(poll_node(
                index,
                index == local,
                endpoint.clone(),
                tx.clone(),
            ));
        }
        tasks.spawn(heartbeat(admins[local].clone()));
        tasks.spawn(publish(Arc::clone(&topology), rx, master_tx));
        Discovery { topology, master }
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
    index: usize,
    sent: Instant,
    route: Option<RouteJson>,
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

async fn poll_node(index: usize, local: bool, endpoint: AdminEndpoint, tx: mpsc::Sender<Answer>) {
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
        if tx.send(Answer { index, sent, route }).await.is_err() {
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
    let n = topology
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .nodes
        .len();
    let mut answered: Vec<Option<Instant>> = vec![None; n];
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
            if let Some(a) = answer {
                let is_local = t.nodes[a.index].id == t.me;
                if let Some(route) = a.route {
                    answered[a.index] = Some(now);
                    t.reports[a.index] = Some(match route.agent {
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
            for (i, when) in answered.iter().enumerate() {
                if when.is_none_or(|w| now.duration_since(w) > REPORT_TTL) {
                    t.reports[i] = None;
                }
            }
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
