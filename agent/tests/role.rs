//! The agent's decisions, observation by observation.

#![allow(clippy::unwrap_used)]

use agent::role::{
    Action, DIVERGED_AFTER, LeaseView, MariaDbState, Observation, ReplicaState, Role, RoleMachine,
    ServerIds,
};
use binlog::GtidPos;

const BINLOG_PORT: u16 = 17001;
const IDS: ServerIds = ServerIds {
    replica: 1002,
    master_base: 1_001_000,
};
/// The lease version the observations carry.
const VERSION: u64 = 7;

fn machine() -> RoleMachine {
    RoleMachine::new(BINLOG_PORT, IDS)
}

fn pos(s: &str) -> GtidPos {
    s.parse().unwrap()
}

fn replicating(at: &str) -> MariaDbState {
    MariaDbState {
        binlog_pos: pos(at),
        read_only: true,
        replica: Some(ReplicaState {
            master_host: "127.0.0.1".into(),
            master_port: BINLOG_PORT,
            io_running: true,
            sql_running: true,
            sql_error: None,
        }),
        semi_sync_master: false,
        waiting_commits: 0,
        server_id: IDS.replica,
    }
}

/// A promoted master's MariaDB at `at`, writable, with `waiting_commits`
/// commits waiting for an ACK.
fn writable_master(at: &str, waiting_commits: u64) -> MariaDbState {
    MariaDbState {
        binlog_pos: pos(at),
        read_only: false,
        replica: None,
        semi_sync_master: true,
        waiting_commits,
        server_id: IDS.master(VERSION),
    }
}

fn obs(lease: LeaseView, chosen: &str, db: Option<MariaDbState>) -> Observation {
    Observation {
        lease,
        lease_version: VERSION,
        draining: false,
        chosen: pos(chosen),
        mariadb: db,
    }
}

#[test]
fn a_fresh_node_points_its_mariadb_at_the_binlog_server_then_may_campaign() {
    let mut m = machine();
    let fresh = MariaDbState {
        read_only: false,
        server_id: IDS.replica,
        ..MariaDbState::default()
    };
    let d = m.decide(&obs(LeaseView::Vacant, "", Some(fresh)));
    assert_eq!(
        d.actions,
        vec![Action::SetReadOnly(true), Action::ReplicateFromBinlogServer]
    );
    assert!(!d.may_campaign, "not before it replicates");
    let d = m.decide(&obs(LeaseView::Vacant, "", Some(replicating(""))));
    assert!(d.actions.is_empty());
    assert!(d.may_campaign);
    assert_eq!(m.role(), &Role::Replica);
}

#[test]
fn a_lagging_replica_does_not_campaign() {
    let mut m = machine();
    let d = m.decide(&obs(
        LeaseView::Other(2),
        "0-1-10",
        Some(replicating("0-1-9")),
    ));
    assert!(!d.may_campaign);
    let d = m.decide(&obs(
        LeaseView::Other(2),
        "0-1-10",
        Some(replicating("0-1-10")),
    ));
    assert!(d.may_campaign);
}

#[test]
fn promotion_waits_for_the_chosen_log_then_opens_the_write_path_before_writes() {
    let mut m = machine();
    m.decide(&obs(LeaseView::Vacant, "0-1-5", Some(replicating("0-1-5"))));
    // Won the lease but the store learned more meanwhile: wait.
    let d = m.decide(&obs(LeaseView::Mine, "0-1-7", Some(replicating("0-1-6"))));
    assert!(d.actions.is_empty());
    assert!(matches!(m.role(), Role::Promoting(_)));
    assert!(!m.write_path_open());
    let d = m.decide(&obs(LeaseView::Mine, "0-1-7", Some(replicating("0-1-7"))));
    assert_eq!(
        d.actions,
        vec![
            Action::StopReplica,
            Action::SetServerId(IDS.master(VERSION)),
            Action::SetSemiSyncMaster(true),
            Action::OpenWritePath,
            Action::SetReadOnly(false),
        ]
    );
    assert_eq!(m.role(), &Role::Master);
    // Steady: nothing more to do while it stays writable and lossless.
    let master = writable_master("0-1-9", 3);
    let d = m.decide(&obs(LeaseView::Mine, "0-1-8", Some(master)));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(d.may_campaign);
}

#[test]
fn losing_the_lease_closes_the_write_path_first_and_blocks_on_waiting_commits() {
    let mut m = machine();
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    assert!(m.write_path_open());
    let stuck = writable_master("0-1-3", 1);
    let d = m.decide(&obs(LeaseView::Other(3), "0-1-2", Some(stuck)));
    // Not read_only: setting it would wait for commits that never finish.
    assert_eq!(d.actions, vec![Action::CloseWritePath]);
    assert!(matches!(m.role(), Role::Blocked(_)));
    assert!(!d.may_campaign);
}

#[test]
fn a_clean_former_master_turns_replica() {
    let mut m = machine();
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    let clean = writable_master("0-1-3", 0);
    let d = m.decide(&obs(LeaseView::Vacant, "0-1-3", Some(clean)));
    assert_eq!(
        d.actions,
        vec![
            Action::CloseWritePath,
            Action::SetReadOnly(true),
            Action::SetSemiSyncMaster(false),
            Action::SetServerId(IDS.replica),
            Action::ReplicateFromBinlogServer,
        ]
    );
    assert_eq!(m.role(), &Role::Replica);
}

#[test]
fn a_gtid_missing_from_the_chosen_log_is_diverged_only_when_it_persists() {
    let mut m = machine();
    let ahead = replicating("0-9-4");
    for _ in 1..DIVERGED_AFTER {
        let d = m.decide(&obs(LeaseView::Other(2), "0-1-3", Some(ahead.clone())));
        assert!(matches!(m.role(), Role::Blocked(_)), "{:?}", m.role());
        assert!(!d.may_campaign);
    }
    // The store catching up clears a suspicion.
    m.decide(&obs(LeaseView::Other(2), "0-9-4", Some(ahead.clone())));
    assert_eq!(m.role(), &Role::Replica);
    let ahead = replicating("0-9-5");
    for _ in 0..DIVERGED_AFTER {
        m.decide(&obs(LeaseView::Other(2), "0-9-4", Some(ahead.clone())));
    }
    assert!(matches!(m.role(), Role::Diverged(_)), "{:?}", m.role());
    // Sticky, even with the lease offered.
    let d = m.decide(&obs(LeaseView::Mine, "0-9-9", Some(replicating("0-9-9"))));
    assert!(matches!(m.role(), Role::Diverged(_)));
    assert!(!d.may_campaign);
    assert!(!d.actions.contains(&Action::OpenWritePath));
    // Until the node is rebuilt: its MariaDB, restored from a peer, is
    // judged afresh.
    m.restart_after_rebuild();
    assert_eq!(m.role(), &Role::Starting);
    m.decide(&obs(
        LeaseView::Other(2),
        "0-9-9",
        Some(replicating("0-9-9")),
    ));
    assert_eq!(m.role(), &Role::Replica);
}

#[test]
fn a_replication_error_blocks_and_mariadb_down_closes_everything() {
    let mut m = machine();
    let mut broken = replicating("0-1-1");
    if let Some(r) = broken.replica.as_mut() {
        r.sql_running = false;
        r.sql_error = Some((1062, "Duplicate entry".into()));
    }
    let d = m.decide(&obs(LeaseView::Other(2), "0-1-2", Some(broken)));
    assert!(matches!(m.role(), Role::Blocked(_)));
    assert!(!d.may_campaign);
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    assert!(m.write_path_open());
    let d = m.decide(&obs(LeaseView::Mine, "", None));
    assert_eq!(d.actions, vec![Action::CloseWritePath]);
    assert_eq!(m.role(), &Role::MariaDbDown);
    assert!(!d.may_campaign);
}

#[test]
fn every_promotion_takes_a_fresh_server_id_outside_the_replicas_range() {
    let ids = ServerIds::new(1000, 3);
    assert_eq!(ids.replica, 1003);
    let (a, b) = (ids.master(41), ids.master(42));
    assert_ne!(a, b);
    assert!(
        a > ServerIds::new(1000, 999_999).replica,
        "no overlap with any replica id"
    );
    // A renewal moves the version: the id of a promotion stays put.
    let mut m = machine();
    let mut o = obs(LeaseView::Mine, "", Some(replicating("")));
    m.decide(&o);
    let mut master = replicating("");
    master.replica = None;
    master.read_only = false;
    master.semi_sync_master = true;
    master.server_id = IDS.master(VERSION);
    o.mariadb = Some(master);
    o.lease_version = VERSION + 1;
    assert!(m.decide(&o).actions.is_empty());
}

#[test]
fn a_draining_master_turns_read_only_but_keeps_its_write_path() {
    let mut m = machine();
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    let mut master = replicating("0-1-4");
    master.replica = None;
    master.read_only = false;
    master.semi_sync_master = true;
    master.server_id = IDS.master(VERSION);
    let mut o = obs(LeaseView::Mine, "0-1-3", Some(master.clone()));
    o.draining = true;
    let d = m.decide(&o);
    assert_eq!(d.actions, vec![Action::SetReadOnly(true)]);
    assert!(m.write_path_open(), "in-flight commits still get their ACK");
    // Drain abandoned: writable again.
    master.read_only = true;
    o.mariadb = Some(master);
    o.draining = false;
    assert_eq!(m.decide(&o).actions, vec![Action::SetReadOnly(false)]);
}

/// A master whose lease is about to end without a renewal (cut off, say)
/// makes itself harmless before any other node may take the lease: no
/// more ACKs, read-only, and it keeps trying to renew.
#[test]
fn an_ending_lease_fences_the_master_and_a_renewal_promotes_it_again() {
    let mut m = machine();
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    assert!(m.write_path_open());
    let master = writable_master("0-1-3", 0);
    let d = m.decide(&obs(LeaseView::Ending, "0-1-3", Some(master.clone())));
    assert_eq!(
        d.actions,
        vec![Action::CloseWritePath, Action::SetReadOnly(true)]
    );
    assert!(matches!(m.role(), Role::Blocked(_)), "{:?}", m.role());
    assert!(d.may_campaign, "it keeps renewing");
    // Renewed: a new term, a fresh server_id, writable again.
    let fenced = MariaDbState {
        read_only: true,
        ..master
    };
    let mut o = obs(LeaseView::Mine, "0-1-3", Some(fenced));
    o.lease_version = VERSION + 1;
    let d = m.decide(&o);
    assert_eq!(
        d.actions,
        vec![
            Action::SetServerId(IDS.master(VERSION + 1)),
            Action::OpenWritePath,
            Action::SetReadOnly(false),
        ]
    );
    assert_eq!(m.role(), &Role::Master);
}

/// `SET read_only` would wait forever behind commits waiting for an ACK:
/// a supervised MariaDB is restarted as a replica instead (it rolls them
/// back), an unsupervised one is reported.
#[test]
fn an_ending_lease_with_waiting_commits_restarts_a_supervised_mariadb() {
    let stuck = writable_master("0-1-4", 2);
    let mut m = machine().supervised();
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    let d = m.decide(&obs(LeaseView::Ending, "0-1-3", Some(stuck.clone())));
    assert_eq!(
        d.actions,
        vec![Action::CloseWritePath, Action::RestartMariaDb]
    );
    // Its binlog holds commits that were never chosen: promoted again it
    // would be diverged, so it stops renewing.
    assert!(!d.may_campaign);
    let mut m = machine();
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    let d = m.decide(&obs(LeaseView::Ending, "0-1-3", Some(stuck)));
    assert_eq!(d.actions, vec![Action::CloseWritePath]);
    assert!(!d.may_campaign);
    match m.role() {
        Role::Blocked(why) => assert!(why.contains("2 commit(s)"), "{why}"),
        r => panic!("{r:?}"),
    }
}

/// A supervised former master found still writable after its lease (it
/// was frozen past it, say) is restarted as a replica at once: `SET
/// read_only` could wait behind a commit that comes in meanwhile.
#[test]
fn a_supervised_former_master_still_writable_is_restarted() {
    let mut m = machine().supervised();
    m.decide(&obs(LeaseView::Mine, "", Some(replicating(""))));
    let writable = writable_master("0-1-3", 0);
    let d = m.decide(&obs(LeaseView::Other(2), "0-1-3", Some(writable)));
    assert_eq!(
        d.actions,
        vec![Action::CloseWritePath, Action::RestartMariaDb]
    );
    assert!(matches!(m.role(), Role::Blocked(_)));
    assert!(!d.may_campaign);
}

/// The fencing margin: three looks, at most a quarter of the lease (a
/// master renews every quarter, so it fences only after renewals failed).
#[test]
fn the_fencing_margin_is_three_looks_at_most_a_quarter_of_the_lease() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    assert_eq!(agent::fencing_margin(ms(100), ms(2000)), ms(300));
    assert_eq!(agent::fencing_margin(ms(100), ms(800)), ms(200));
    assert_eq!(agent::fencing_margin(ms(50), ms(10_000)), ms(150));
}

/// A lease holder that gave up waiting for its MariaDB to catch up stops
/// renewing; the fencing window must not renew it again.
#[test]
fn an_ending_lease_does_not_renew_a_node_that_gave_up_promoting() {
    use agent::role::PROMOTION_PATIENCE_LOOKS;
    let mut m = machine();
    let behind = replicating("0-1-1");
    for _ in 0..=PROMOTION_PATIENCE_LOOKS {
        m.decide(&obs(LeaseView::Mine, "0-1-5", Some(behind.clone())));
    }
    let d = m.decide(&obs(LeaseView::Mine, "0-1-5", Some(behind.clone())));
    assert!(!d.may_campaign, "patience exhausted");
    let d = m.decide(&obs(LeaseView::Ending, "0-1-5", Some(behind)));
    assert!(!d.may_campaign, "the fence does not renew it either");
}

/// A switchover drains the master: a promotion that completes meanwhile
/// (a renewal after a fence) leaves it read-only.
#[test]
fn a_promotion_while_draining_stays_read_only() {
    let mut m = machine();
    let mut o = obs(LeaseView::Mine, "0-1-7", Some(replicating("0-1-7")));
    o.draining = true;
    let d = m.decide(&o);
    assert!(
        !d.actions.contains(&Action::SetReadOnly(false)),
        "{:?}",
        d.actions
    );
}
