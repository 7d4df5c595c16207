//! The agent's decisions as a pure state machine: no I/O, no clock.
//!
//! [`RoleMachine::decide`] takes one [`Observation`] (who holds the lease,
//! the chosen log's GTID position, the local MariaDB's state) and returns
//! the [`Action`]s that move the local MariaDB one step closer to the role
//! the lease gives this node, plus whether this node may campaign for the
//! lease. It is level-triggered, like a controller: the same observation
//! gives the same actions until they took effect, so a failed or lost
//! action is simply retried on the next observation.
//!
//! Promotion (the lease is ours), one step per observation, in this order:
//! wait until the local MariaDB has applied every chosen GTID; stop its
//! replication; enable the semi-sync master (with the never-time-out
//! settings: a commit waits for the binlog server's ACK); open the write
//! path (the binlog server connects as the semi-sync replica); only then
//! turn `read_only` off. Demotion (the lease is someone else's, or nobody's)
//! closes the write path first (no more ACKs), then sets `read_only`; a
//! MariaDB with commits waiting for an ACK, or holding GTIDs the chosen log
//! lacks, is not pointed at the binlog server (it needs the restart as a
//! replica that truncates them, or it is diverged): the node says so and
//! does not campaign.

use binlog::{Gtid, GtidPos};
use serde::Serialize;

/// Who holds the master lease, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseView {
    /// This node, by its own (conservative) clock.
    Mine,
    /// Still this node's, but about to end without a renewal (less than the
    /// agent's fencing margin left): the master makes itself harmless now,
    /// while no other node can hold the lease yet, and keeps trying to
    /// renew. A renewal turns it back into [`LeaseView::Mine`].
    Ending,
    /// Another node.
    Other(u64),
    /// Nobody (expired, or never taken).
    Vacant,
}

/// The local MariaDB's replication (from `SHOW SLAVE STATUS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaState {
    pub master_host: String,
    pub master_port: u16,
    pub io_running: bool,
    pub sql_running: bool,
    /// The SQL thread's last error, if any (`Last_SQL_Errno`, `Last_SQL_Error`).
    pub sql_error: Option<(u32, String)>,
}

/// What the agent reads from the local MariaDB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MariaDbState {
    /// `gtid_binlog_pos`: everything its binary log holds.
    pub binlog_pos: GtidPos,
    pub read_only: bool,
    /// `None`: no replication configured.
    pub replica: Option<ReplicaState>,
    /// `rpl_semi_sync_master_enabled`.
    pub semi_sync_master: bool,
    /// `Rpl_semi_sync_master_wait_sessions`: commits waiting for an ACK.
    pub waiting_commits: u64,
    /// `@@server_id`.
    pub server_id: u32,
}

/// One look at the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub lease: LeaseView,
    /// The lease value's version as this node last applied it.
    pub lease_version: u64,
    /// A switchover is draining this master: keep it read-only (commits in
    /// flight still get their ACK) until the lease is handed over.
    pub draining: bool,
    /// The chosen log's position as this node's store holds it.
    pub chosen: GtidPos,
    /// `None`: the local MariaDB does not answer.
    pub mariadb: Option<MariaDbState>,
}

/// A step on the local MariaDB or the binlog server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `SET GLOBAL read_only = ...`.
    SetReadOnly(bool),
    /// `SET GLOBAL server_id = ...`.
    SetServerId(u32),
    /// `STOP SLAVE`.
    StopReplica,
    /// `STOP SLAVE`; `gtid_slave_pos` set to the local binlog's position
    /// (checked to be in the chosen log first); `CHANGE MASTER TO` the local
    /// binlog server with `MASTER_USE_GTID=slave_pos` and the replication
    /// account; `START SLAVE`. The only way the agent (re)starts
    /// replication: never a bare `START SLAVE`, since the replication state
    /// of a restarted or former master is stale, while its binlog holds
    /// exactly what it applied.
    ReplicateFromBinlogServer,
    /// Semi-sync master on (never falling back to asynchronous) or off.
    SetSemiSyncMaster(bool),
    /// Let the binlog server's write path connect and ACK.
    OpenWritePath,
    /// Stop the write path: no further ACK.
    CloseWritePath,
    /// Kill and restart the supervised `mariadbd` as a replica (it rolls
    /// back the commits left waiting for an ACK).
    RestartMariaDb,
}

/// The role this node's MariaDB is in, or on the way to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "role", content = "detail", rename_all = "snake_case")]
pub enum Role {
    /// Nothing observed yet.
    Starting,
    /// The local MariaDB is unreachable.
    MariaDbDown,
    /// Read-only, replicating from the local binlog server.
    Replica,
    /// Holds the lease, switching the local MariaDB to master; the detail
    /// names the step waited on.
    Promoting(String),
    /// Holds the lease; the local MariaDB takes writes.
    Master,
    /// Lost the lease and cannot simply replicate (commits waiting for an
    /// ACK, or replication failing): the detail says why.
    Blocked(String),
    /// The local MariaDB holds a GTID the chosen log lacks: the node does
    /// not rejoin until an operator rebuilds it.
    Diverged(String),
    /// The local MariaDB is out of service while its data directory is
    /// replaced (a rebuild, `phxctl node rebuild`); the node does not
    /// campaign.
    Rebuilding,
}

/// What [`RoleMachine::decide`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// In order; the agent stops at the first that fails (and decides again).
    pub actions: Vec<Action>,
    /// May this node campaign for (or renew) the lease now?
    pub may_campaign: bool,
}

/// The first GTID of `local` that `chosen` does not contain (by domain and
/// sequence number), if any.
pub fn first_not_chosen(local: &GtidPos, chosen: &GtidPos) -> Option<Gtid> {
    local.iter().find(|g| !chosen.contains(g))
}

/// The `server_id`s a node's MariaDB takes: a fixed one as a replica, and
/// a fresh one for every promotion, so that no node ever replicates with
/// the id of its own past transactions (a replica skips events carrying its
/// own id: a former master would skip its chosen-but-unacknowledged
/// transactions, rolled back locally, when they come back). The ranges of
/// all nodes must not overlap: replicas `base + node id`, masters
/// `base + MASTER_ID_OFFSET + lease version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIds {
    pub replica: u32,
    /// First id of the masters' range.
    pub master_base: u32,
}

/// Looks a lease holder may wait for its MariaDB to catch up before it
/// stops renewing, so that a node that cannot catch up does not keep the
/// lease (and the cluster without a master) forever.
pub const PROMOTION_PATIENCE_LOOKS: u32 = 50;

/// Where the masters' `server_id` range starts above the cluster's base.
pub const MASTER_ID_OFFSET: u32 = 1_000_000;

impl ServerIds {
    /// The ids of node `node_id` in a cluster whose ids start at `base`.
    pub fn new(base: u32, node_id: u64) -> Self {
        ServerIds {
            replica: base.saturating_add((node_id % u64::from(MASTER_ID_OFFSET)) as u32),
            master_base: base.saturating_add(MASTER_ID_OFFSET),
        }
    }

    /// The id of a master promoted under lease version `version`.
    pub fn master(&self, version: u64) -> u32 {
        let room = u64::from(u32::MAX - self.master_base).max(1);
        self.master_base + (version % room) as u32
    }
}

/// The agent's decision logic (see the module docs).
#[derive(Debug, Clone)]
pub struct RoleMachine {
    role: Role,
    ids: ServerIds,
    /// The id taken for the current promotion.
    promoted_id: Option<u32>,
    /// The agent runs `mariadbd` itself (and may restart it).
    supervised: bool,
    /// Looks in a row spent holding the lease and waiting for the local
    /// MariaDB to catch up.
    waiting_looks: u32,
    /// The local binlog server's replication port (where a replica points).
    binlog_port: u16,
    write_path_open: bool,
    /// A local GTID the chosen log lacked, and in how many observations in
    /// a row: the verdict "diverged" waits for [`DIVERGED_AFTER`] of them,
    /// since the store's view of the chosen log trails by a sync interval.
    suspect: Option<(Gtid, u32)>,
}

/// Observations in a row that must show the same local GTID missing from
/// the chosen log before the node is declared diverged.
pub const DIVERGED_AFTER: u32 = 5;

impl RoleMachine {
    /// A machine for a node whose binlog server serves replicas on
    /// `binlog_port`; the write path starts closed.
    pub fn new(binlog_port: u16, ids: ServerIds) -> Self {
        RoleMachine {
            role: Role::Starting,
            ids,
            promoted_id: None,
            supervised: false,
            waiting_looks: 0,
            binlog_port,
            write_path_open: false,
            suspect: None,
        }
    }

    /// The agent supervises `mariadbd`: a demoted master with commits
    /// waiting for an ACK gets restarted as a replica.
    pub fn supervised(mut self) -> Self {
        self.supervised = true;
        self
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The local MariaDB's data directory was replaced (a rebuild): start
    /// over as on a fresh start. This is what ends [`Role::Diverged`].
    pub fn restart_after_rebuild(&mut self) {
        let mut fresh = RoleMachine::new(self.binlog_port, self.ids);
        fresh.supervised = self.supervised;
        *self = fresh;
    }

    /// Whether the write path may run (as last decided).
    pub fn write_path_open(&self) -> bool {
        self.write_path_open
    }

    /// The next steps for `obs`.
    pub fn decide(&mut self, obs: &Observation) -> Decision {
        let mut actions = Vec::new();
        let Some(db) = &obs.mariadb else {
            // Without its MariaDB a node can neither take writes nor serve.
            if self.write_path_open {
                self.write_path_open = false;
                actions.push(Action::CloseWritePath);
            }
            if !matches!(self.role, Role::Diverged(_)) {
                self.role = Role::MariaDbDown;
            }
            return Decision {
                actions,
                may_campaign: false,
            };
        };
        if let Role::Diverged(_) = self.role {
            // Sticky until an operator rebuilds the node; keep it harmless.
            if self.write_path_open {
                self.write_path_open = false;
                actions.push(Action::CloseWritePath);
            }
            if !db.read_only && db.waiting_commits == 0 {
                actions.push(Action::SetReadOnly(true));
            }
            return Decision {
                actions,
                may_campaign: false,
            };
        }
        match obs.lease {
            LeaseView::Mine => self.promote(obs, db, actions),
            LeaseView::Ending => self.fence(db, actions),
            LeaseView::Other(_) | LeaseView::Vacant => self.follow(obs, db, actions),
        }
    }

    /// The lease is still ours but ends soon without a renewal (the node
    /// may be cut off): stop taking writes before any other node can hold
    /// the lease, so that two writable MariaDBs never coexist. No more
    /// ACKs; read-only; commits already waiting for an ACK (read_only would
    /// wait for them forever) are rolled back by restarting a supervised
    /// `mariadbd` as a replica. The node keeps renewing: if a renewal gets
    /// through, the next observation promotes it again.
    fn fence(&mut self, db: &MariaDbState, mut actions: Vec<Action>) -> Decision {
        if self.write_path_open {
            self.write_path_open = false;
            actions.push(Action::CloseWritePath);
        }
        // A renewal is a new term: it gets a fresh server_id.
        self.promoted_id = None;
        // Renew only as a node that may hold the lease at all: not one that
        // gave up waiting for its MariaDB to catch up, and not one left with
        // commits that only a restart can roll back (their GTIDs are in its
        // binlog and not chosen: promoted again, it would be diverged).
        let mut may_campaign = self.waiting_looks <= PROMOTION_PATIENCE_LOOKS;
        if db.waiting_commits > 0 {
            self.role = Role::Blocked(format!(
                "the lease ends without a renewal and {} commit(s) wait for an ACK: {}",
                db.waiting_commits,
                if self.supervised {
                    "restarting mariadbd as a replica"
                } else {
                    "restart mariadbd as a replica (--init-rpl-role=SLAVE) so it rolls them back"
                }
            ));
            if self.supervised {
                actions.push(Action::RestartMariaDb);
            }
            may_campaign = false;
        } else {
            // `SET read_only` waits for commits in progress (at most a
            // second): once it succeeded, none is left half-way.
            self.role = Role::Blocked("the lease ends without a renewal: read-only".into());
            if !db.read_only {
                actions.push(Action::SetReadOnly(true));
            }
        }
        Decision {
            actions,
            may_campaign,
        }
    }

    fn promote(
        &mut self,
        obs: &Observation,
        db: &MariaDbState,
        mut actions: Vec<Action>,
    ) -> Decision {
        if self.role == Role::Master && self.write_path_open {
            // Steady state: keep it lossless and writable (read-only while
            // a switchover drains it).
            if !db.semi_sync_master {
                actions.push(Action::SetSemiSyncMaster(true));
            }
            if db.read_only != obs.draining {
                actions.push(Action::SetReadOnly(obs.draining));
            }
            return Decision {
                actions,
                may_campaign: true,
            };
        }
        // 1. Every chosen transaction applied locally. (The binlog holds
        // everything applied, own and replicated, whatever the server_id;
        // gtid_current_pos forgets a former master's own transactions once
        // its server_id changes.)
        if !db.binlog_pos.includes(&obs.chosen) {
            self.waiting_looks = self.waiting_looks.saturating_add(1);
            self.role = Role::Promoting(format!(
                "waiting for the local MariaDB to apply the chosen log: applied {}, chosen {}",
                db.binlog_pos, obs.chosen
            ));
            if db.server_id != self.ids.replica {
                // Restarted (or a master's leftover state): re-point it.
                actions.push(Action::SetServerId(self.ids.replica));
                actions.push(Action::ReplicateFromBinlogServer);
            } else if db
                .replica
                .as_ref()
                .is_none_or(|r| !r.io_running || !r.sql_running)
            {
                actions.push(Action::ReplicateFromBinlogServer);
            }
            return Decision {
                actions,
                may_campaign: self.waiting_looks <= PROMOTION_PATIENCE_LOOKS,
            };
        }
        self.waiting_looks = 0;
        // Nothing local beyond the chosen log (a former master's leftovers).
        if self.diverged(db, obs) {
            return Decision {
                actions,
                may_campaign: false,
            };
        }
        // 2. Replication off.
        if db
            .replica
            .as_ref()
            .is_some_and(|r| r.io_running || r.sql_running)
        {
            self.role = Role::Promoting("stopping replication".into());
            actions.push(Action::StopReplica);
        }
        // A fresh server_id for this term, before anything is written.
        let id = *self
            .promoted_id
            .get_or_insert_with(|| self.ids.master(obs.lease_version));
        if db.server_id != id {
            actions.push(Action::SetServerId(id));
        }
        // 3. Lossless semi-sync master.
        if !db.semi_sync_master {
            self.role = Role::Promoting("enabling the semi-sync master".into());
            actions.push(Action::SetSemiSyncMaster(true));
        }
        // 4. The write path, before any write can commit.
        if !self.write_path_open {
            self.write_path_open = true;
            actions.push(Action::OpenWritePath);
        }
        // 5. Writable (read-only while a switchover drains it).
        if db.read_only != obs.draining {
            actions.push(Action::SetReadOnly(obs.draining));
        }
        self.role = Role::Master;
        Decision {
            actions,
            may_campaign: true,
        }
    }

    fn follow(
        &mut self,
        obs: &Observation,
        db: &MariaDbState,
        mut actions: Vec<Action>,
    ) -> Decision {
        self.promoted_id = None;
        self.waiting_looks = 0;
        // No ACK once the lease is not ours, and no writes.
        if self.write_path_open {
            self.write_path_open = false;
            actions.push(Action::CloseWritePath);
        }
        if db.waiting_commits > 0 {
            // Not even read_only: `SET GLOBAL read_only=ON` waits for the
            // commits in progress, and these never finish. They are never
            // acknowledged either (the write path is closed), and every new
            // commit joins them, so nothing can commit here meanwhile.
            self.role = Role::Blocked(format!(
                "{} commit(s) wait for an ACK that will not come: restart mariadbd as a replica \
                 (--init-rpl-role=SLAVE) so it rolls them back",
                db.waiting_commits
            ));
            if self.supervised {
                actions.push(Action::RestartMariaDb);
            }
            return Decision {
                actions,
                may_campaign: false,
            };
        }
        if self.supervised && db.semi_sync_master && !db.read_only {
            // A former master still writable (it was frozen, say, while its
            // lease ran out). `SET read_only` would wait behind any commit
            // that comes in meanwhile; a restart as a replica is immediate,
            // loses nothing acknowledged, and rolls back what was not.
            self.role = Role::Blocked(
                "a former master still writable: restarting mariadbd as a replica".into(),
            );
            actions.push(Action::RestartMariaDb);
            return Decision {
                actions,
                may_campaign: false,
            };
        }
        if !db.read_only {
            actions.push(Action::SetReadOnly(true));
        }
        // A replica's binlog only ever holds what the store served it, so
        // anything beyond the chosen log came from elsewhere.
        if self.diverged(db, obs) {
            return Decision {
                actions,
                may_campaign: false,
            };
        }
        if db.semi_sync_master {
            actions.push(Action::SetSemiSyncMaster(false));
        }
        let replicating = db
            .replica
            .as_ref()
            .is_some_and(|r| r.master_port == self.binlog_port && r.io_running && r.sql_running);
        if db.server_id != self.ids.replica {
            // A former master, or a mariadbd (re)started: whatever its
            // replication state says is stale. Point it at the binlog
            // server afresh, after its own binlog (checked above to be in
            // the chosen log); the threads take the new id when they start.
            actions.push(Action::SetServerId(self.ids.replica));
            actions.push(Action::ReplicateFromBinlogServer);
            self.role = Role::Replica;
            return Decision {
                actions,
                may_campaign: false,
            };
        }
        if let Some((errno, error)) = db.replica.as_ref().and_then(|r| r.sql_error.clone()) {
            self.role = Role::Blocked(format!("replication stopped: error {errno}: {error}"));
            return Decision {
                actions,
                may_campaign: false,
            };
        }
        if !replicating {
            actions.push(Action::ReplicateFromBinlogServer);
        }
        self.role = Role::Replica;
        Decision {
            actions,
            may_campaign: replicating && db.binlog_pos.includes(&obs.chosen),
        }
    }

    /// Whether the local binlog holds a GTID the chosen log lacks: a
    /// suspicion first, the verdict (sticky) once it held for
    /// [`DIVERGED_AFTER`] observations in a row.
    fn diverged(&mut self, db: &MariaDbState, obs: &Observation) -> bool {
        let Some(g) = first_not_chosen(&db.binlog_pos, &obs.chosen) else {
            self.suspect = None;
            return false;
        };
        let seen = match self.suspect {
            Some((s, n)) if s == g => n + 1,
            _ => 1,
        };
        self.suspect = Some((g, seen));
        if seen >= DIVERGED_AFTER {
            self.role = Role::Diverged(format!(
                "the local binlog holds {g}, which the chosen log (at {}) does not contain",
                obs.chosen
            ));
        } else {
            self.role = Role::Blocked(format!(
                "the local binlog holds {g}, not (yet) in the chosen log at {}",
                obs.chosen
            ));
        }
        true
    }
}
