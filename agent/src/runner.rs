//! The agent's loop: observe, decide ([`RoleMachine`]), act, publish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use binlog::GtidPos;
use serde::Serialize;
use tokio::sync::watch;

use crate::mariadb::LocalMariaDb;
use crate::role::{Action, LeaseView, Observation, Role, RoleMachine, ServerIds};
use crate::supervisor::Supervisor;

/// Longest wait for the local MariaDB's state; past it, it counts as down.
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for one step; past it, the step counts as failed (and the
/// loop goes on looking).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long before the end of its own lease a master that was not renewed
/// fences itself ([`LeaseView::Ending`]), for an agent that looks every
/// `poll_interval` under a lease of `lease`: three looks (one to notice, and
/// room for the steps: a kill or a `SET read_only`), at most a quarter of
/// the lease. A master renews every quarter of the lease, so it fences only
/// after two to three renewals in a row failed. Together with the lease's
/// drift margin on both sides, this is the time by which the old master is
/// read-only before any other node may take the lease.
pub fn fencing_margin(poll_interval: Duration, lease: Duration) -> Duration {
    (poll_interval * 3).min(lease / 4)
}

/// What the agent needs from the binlog server.
pub trait ClusterView: Send + Sync + 'static {
    /// Who holds the lease, as this node sees it ([`LeaseView::Ending`]
    /// within [`fencing_margin`] of its end).
    fn lease(&self) -> LeaseView;
    /// The lease value's version as this node last applied it.
    fn lease_version(&self) -> u64;
    /// The chosen log's position in this node's store.
    fn chosen(&self) -> GtidPos;
}

/// The switches the agent sets for the binlog server.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    /// Read by the Paxos state machine's `may_campaign`.
    pub may_campaign: Arc<AtomicBool>,
    /// The write path runs (connects, proposes, ACKs) only while set.
    pub write_path: Arc<AtomicBool>,
    /// Set by a switchover: the master turns read-only while its last
    /// commits are acknowledged, before it hands the lease over.
    pub draining: Arc<AtomicBool>,
    /// Set while the local MariaDB is out of service (a rebuild replaces its
    /// data directory): the agent neither starts nor queries it, keeps the
    /// write path closed and does not campaign; `AgentStatus::rebuilding`
    /// confirms it has seen it. When cleared, the agent starts `mariadbd`
    /// again.
    pub rebuilding: Arc<AtomicBool>,
    /// Set by a rebuild that replaced the data directory (before it clears
    /// `rebuilding`): the agent then judges the new MariaDB afresh, which
    /// ends `diverged`. A rebuild that failed leaves it unset, and the node
    /// stays as it was.
    pub rebuilt: Arc<AtomicBool>,
}

/// The agent as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    #[serde(flatten)]
    pub role: Role,
    pub may_campaign: bool,
    pub write_path_open: bool,
    pub mariadb_up: bool,
    /// The last step that failed, if the latest attempt failed.
    pub last_error: Option<String>,
    pub steps_done: u64,
    pub steps_failed: u64,
    /// How stale reads of the local MariaDB may be: 0 while it has applied
    /// every chosen transaction, else the time since it last had (since the
    /// agent started, if never; [`RESTORED_LAG_MS`] after a rebuild). `None` while MariaDB is down. The proxy's
    /// read-only port compares it with `proxy.ro_max_lag`.
    pub lag_ms: Option<u64>,
    /// Whether the local proxy sent a heartbeat lately; `None` when this
    /// node does not require a proxy (`phxbinlogsvr --without-proxy`).
    pub proxy_alive: Option<bool>,
    /// The agent has seen `Gates::rebuilding` and leaves MariaDB alone.
    pub rebuilding: bool,
}

impl Default for AgentStatus {
    fn default() -> Self {
        AgentStatus {
            role: Role::Starting,
            may_campaign: false,
            write_path_open: false,
            mariadb_up: false,
            last_error: None,
            steps_done: 0,
            steps_failed: 0,
            lag_ms: None,
            proxy_alive: None,
            rebuilding: false,
        }
    }
}

/// The local proxy's heartbeats (`POST /proxy/heartbeat` on the admin API).
/// A node whose proxy has not beaten within the timeout does not campaign for
/// the lease: clients of its ports could not reach a master it would become.
/// A master keeps renewing without one (its MariaDB is reached directly by
/// every other node's proxy; stepping down would only cause a failover).
#[derive(Debug, Clone)]
pub struct ProxyLiveness {
    last: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
}

impl ProxyLiveness {
    /// Alive while the last heartbeat is at most `timeout` old.
    pub fn new(timeout: Duration) -> Self {
        ProxyLiveness {
            last: Arc::default(),
            timeout,
        }
    }

    /// Records a heartbeat now.
    pub fn beat(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    pub fn is_alive(&self) -> bool {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() <= self.timeout)
    }
}

/// How long a proxy heartbeat counts (the proxy sends one every second).
pub const PROXY_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// The shared status (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct StatusHandle(Arc<Mutex<AgentStatus>>);

impl StatusHandle {
    pub fn get(&self) -> AgentStatus {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The agent of one node.
pub struct Agent<V> {
    view: V,
    mariadb: LocalMariaDb,
    machine: RoleMachine,
    gates: Gates,
    status: StatusHandle,
    poll_interval: Duration,
    steps: u64,
    supervisor: Option<Arc<Supervisor>>,
    /// When the supervised `mariadbd` was last started.
    last_start: Option<std::time::Instant>,
    /// Set when this node requires a live local proxy to campaign.
    proxy: Option<ProxyLiveness>,
    /// When the local MariaDB was last seen with every chosen transaction.
    last_caught_up: Instant,
    /// The last look saw `Gates::rebuilding`.
    rebuilding: bool,
    /// The local MariaDB was restored from a backup and has not yet had
    /// every chosen transaction: it reports [`RESTORED_LAG_MS`].
    restored_behind: bool,
}

/// The lag a MariaDB restored from a backup reports until it has every
/// chosen transaction (its real lag is the backup's age, unknown here): a
/// day, so that the read-only port does not take it for fresh.
pub const RESTORED_LAG_MS: u64 = 24 * 3600 * 1000;

/// Shortest time between two starts of the supervised `mariadbd`.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(2);

impl<V: ClusterView> Agent<V> {
    /// An agent over the binlog server's `view`, driving `mariadb`, whose
    /// replica points at `binlog_port`; it looks every `poll_interval`.
    pub fn new(
        view: V,
        mariadb: LocalMariaDb,
        binlog_port: u16,
        ids: ServerIds,
        gates: Gates,
        poll_interval: Duration,
    ) -> Self {
        gates.may_campaign.store(false, Ordering::Release);
        gates.write_path.store(false, Ordering::Release);
        Agent {
            view,
            mariadb,
            machine: RoleMachine::new(binlog_port, ids),
            gates,
            status: StatusHandle::default(),
            poll_interval,
            steps: 0,
            supervisor: None,
            last_start: None,
            proxy: None,
            last_caught_up: Instant::now(),
            rebuilding: false,
            restored_behind: false,
        }
    }

    /// Campaign only while `proxy` reports a live local proxy.
    pub fn with_proxy(mut self, proxy: ProxyLiveness) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Runs `mariadbd` under this agent: started (as a replica) when it is
    /// not running, restarted to roll back commits a demoted master left
    /// waiting, stopped when the agent stops.
    pub fn with_supervisor(mut self, supervisor: Arc<Supervisor>) -> Self {
        self.machine = self.machine.clone().supervised();
        self.supervisor = Some(supervisor);
        self
    }

    /// The switches it sets (shared).
    pub fn gates(&self) -> Gates {
        self.gates.clone()
    }

    /// The local MariaDB it drives.
    pub fn mariadb(&self) -> &LocalMariaDb {
        &self.mariadb
    }

    /// The status, updated after every look.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Runs until `shutdown` turns true; closes the write path on the way out.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
            self.turn().await;
        }
        self.gates.write_path.store(false, Ordering::Release);
        self.gates.may_campaign.store(false, Ordering::Release);
        if let Some(s) = self.supervisor.take() {
            let _ = tokio::task::spawn_blocking(move || s.stop(Duration::from_secs(60))).await;
        }
    }

    /// (Re)starts the supervised `mariadbd` if it is not running.
    fn keep_mariadb_running(&mut self) {
        let Some(s) = &self.supervisor else { return };
        if s.is_running() {
            return;
        }
        if self
            .last_start
            .is_some_and(|t| t.elapsed() < RESTART_BACKOFF)
        {
            return;
        }
        self.last_start = Some(std::time::Instant::now());
        match s.start() {
            Ok(()) => tracing::info!("agent: mariadbd (re)started as a replica"),
            Err(e) => tracing::error!(error = %e, "agent: cannot start mariadbd"),
        }
    }

    /// While `Gates::rebuilding` is set: hands-off (see there). Returns
    /// whether it is set.
    fn rebuilding(&mut self) -> bool {
        if self.gates.rebuilding.load(Ordering::Acquire) {
            if !self.rebuilding {
                tracing::info!("agent: rebuild: leaving the local MariaDB alone");
                self.rebuilding = true;
            }
            self.gates.write_path.store(false, Ordering::Release);
            self.gates.may_campaign.store(false, Ordering::Release);
            self.status.update(|s| {
                s.role = Role::Rebuilding;
                s.may_campaign = false;
                s.write_path_open = false;
                s.mariadb_up = false;
                s.lag_ms = None;
                s.last_error = None;
                s.rebuilding = true;
            });
            return true;
        }
        if self.rebuilding {
            self.rebuilding = false;
            self.last_start = None;
            if self.gates.rebuilt.swap(false, Ordering::AcqRel) {
                tracing::info!("agent: rebuild over: starting the restored MariaDB");
                self.machine.restart_after_rebuild();
                self.restored_behind = true;
            } else {
                tracing::info!("agent: rebuild abandoned: starting the local MariaDB again");
            }
            self.status.update(|s| s.rebuilding = false);
        }
        false
    }

    /// One observe-decide-act round.
    async fn turn(&mut self) {
        if self.rebuilding() {
            return;
        }
        self.keep_mariadb_running();
        let mariadb = match tokio::time::timeout(OBSERVE_TIMEOUT, self.mariadb.observe()).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "agent: local MariaDB not readable");
                None
            }
            Err(_) => {
                tracing::warn!("agent: local MariaDB did not answer within {OBSERVE_TIMEOUT:?}");
                None
            }
        };
        // A data directory restored from a backup (`phxctl node rebuild`):
        // adopt its GTID position before anything else looks at it.
        if mariadb.is_some()
            && let Some(sup) = &self.supervisor
            && let Some(gtid) = sup.restored_position()
        {
            match tokio::time::timeout(STEP_TIMEOUT, self.mariadb.adopt_restored_position(&gtid))
                .await
            {
                Ok(Ok(())) => {
                    sup.restored_position_adopted();
                    tracing::info!(%gtid, "agent: restored data directory: adopted its GTID position");
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {STEP_TIMEOUT:?}"),
                    };
                    tracing::warn!(%gtid, error = %why, "agent: cannot adopt the restored GTID position yet");
                    // MariaDB is up; the rebuild waiting for it reports this.
                    self.status.update(|s| {
                        s.mariadb_up = true;
                        s.last_error =
                            Some(format!("adopting the restored GTID position {gtid}: {why}"));
                    });
                }
            }
            return;
        }
        let obs = Observation {
            lease: self.view.lease(),
            lease_version: self.view.lease_version(),
            draining: self.gates.draining.load(Ordering::Acquire),
            chosen: self.view.chosen(),
            mariadb,
        };
        let before = self.machine.role().clone();
        let decision = self.machine.decide(&obs);
        let proxy_alive = self.proxy.as_ref().map(ProxyLiveness::is_alive);
        // A lease holder renews without its proxy (see `ProxyLiveness`).
        let may_campaign = decision.may_campaign
            && (proxy_alive != Some(false)
                || matches!(obs.lease, LeaseView::Mine | LeaseView::Ending));
        self.gates
            .may_campaign
            .store(may_campaign, Ordering::Release);
        let lag_ms = obs.mariadb.as_ref().map(|db| {
            if db.binlog_pos.includes(&obs.chosen) {
                self.last_caught_up = Instant::now();
                self.restored_behind = false;
            }
            if self.restored_behind {
                RESTORED_LAG_MS
            } else {
                self.last_caught_up.elapsed().as_millis() as u64
            }
        });
        let mut error = None;
        let mut failed = 0;
        for action in &decision.actions {
            let result = match action {
                Action::OpenWritePath => {
                    self.gates.write_path.store(true, Ordering::Release);
                    Ok(())
                }
                Action::CloseWritePath => {
                    self.gates.write_path.store(false, Ordering::Release);
                    Ok(())
                }
                Action::RestartMariaDb => match &self.supervisor {
                    Some(s) => {
                        tracing::warn!(
                            "agent: restarting mariadbd as a replica to roll back commits that were never acknowledged"
                        );
                        s.kill();
                        self.last_start = Some(std::time::Instant::now());
                        s.start().map_err(|e| e.to_string())
                    }
                    None => Err("no supervised mariadbd".to_string()),
                },
                sql => match tokio::time::timeout(STEP_TIMEOUT, self.mariadb.apply(sql)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
                },
            };
            match result {
                Ok(()) => {
                    self.steps += 1;
                    tracing::info!(?action, "agent: step done");
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(?action, error = %e, "agent: step failed; retrying on the next look");
                    error = Some(format!("{action:?}: {e}"));
                    break;
                }
            }
        }
        let role = self.machine.role().clone();
        if role != before {
            match &role {
                Role::Diverged(why) | Role::Blocked(why) => {
                    tracing::error!(role = ?role, "agent: {why}")
                }
                _ => tracing::info!(from = ?before, to = ?role, "agent: role changed"),
            }
        }
        let steps = self.steps;
        let write_open = self.gates.write_path.load(Ordering::Acquire);
        let up = obs.mariadb.is_some();
        self.status.update(|s| {
            s.role = role;
            s.may_campaign = may_campaign;
            s.lag_ms = lag_ms;
            s.proxy_alive = proxy_alive;
            s.write_path_open = write_open;
            s.mariadb_up = up;
            s.last_error = error;
            s.steps_done = steps;
            s.steps_failed += failed;
        });
    }
}
