//! Hand-driven scenarios of the consensus core: a few nodes, a perfect network
//! delivered in order, in-memory logs. Each test spells out one rule of the
//! protocol or the lease; the randomised fault search is tests/simulation.rs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use paxos::message::{LogRecord, Message};
use paxos::{
    ChosenEntry, Core, CoreConfig, EntryReader, InstanceId, Membership, NodeId, Recovery,
    SystemState, Time, Value,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct MemLog(Arc<Mutex<Vec<LogRecord>>>);

impl EntryReader for MemLog {
    fn read(&self, instance: InstanceId) -> Result<Option<Value>, String> {
        let log = self.0.lock().unwrap();
        Ok(log
            .iter()
            .rev()
            .find(|r| r.instance() == Some(instance))
            .cloned()
            .and_then(LogRecord::into_value))
    }
}

struct Cluster {
    now: Time,
    cores: BTreeMap<NodeId, Core>,
    logs: BTreeMap<NodeId, MemLog>,
    applied: BTreeMap<NodeId, Vec<ChosenEntry>>,
    wire: VecDeque<(NodeId, NodeId, Message)>,
    /// Messages sent, by kind, for counting round trips.
    sent: BTreeMap<&'static str, usize>,
    /// Per node: `Ready`s that asked for an fsync.
    syncs: BTreeMap<NodeId, usize>,
    /// Per node: the chosen prefix its log holds as a `ChosenPrefix` record
    /// (handed out) and the part of it an fsync covered.
    prefix_written: BTreeMap<NodeId, InstanceId>,
    prefix_synced: BTreeMap<NodeId, InstanceId>,
    initial: SystemState,
}

fn config(id: NodeId) -> CoreConfig {
    let mut c = CoreConfig::new(id);
    c.lease_duration = Duration::from_secs(2);
    c
}

impl Cluster {
    fn new(n: u64) -> Self {
        let initial = SystemState {
            membership: Membership::new((1..=n).map(|id| (id, format!("n{id}")))),
            lease: Default::default(),
        };
        let mut c = Cluster {
            now: Duration::from_secs(100),
            cores: BTreeMap::new(),
            logs: BTreeMap::new(),
            applied: BTreeMap::new(),
            wire: VecDeque::new(),
            sent: BTreeMap::new(),
            syncs: BTreeMap::new(),
            prefix_written: BTreeMap::new(),
            prefix_synced: BTreeMap::new(),
            initial,
        };
        for id in 1..=n {
            c.start(id);
        }
        c
    }

    /// Starts (or restarts) a node from its log.
    fn start(&mut self, id: NodeId) {
        let log = self.logs.entry(id).or_default().clone();
        let mut recovery = Recovery::new();
        let mut prefix = 0;
        for r in log.0.lock().unwrap().iter() {
            recovery.add(r);
            if let LogRecord::ChosenPrefix { upto } = r {
                prefix = prefix.max(*upto);
            }
        }
        // This harness's log loses nothing at a restart: all of it counts
        // as synced.
        self.prefix_written.insert(id, prefix);
        self.prefix_synced.insert(id, prefix);
        let core = Core::new(
            config(id),
            Some(self.initial.clone()),
            recovery,
            Box::new(log),
            0,
            self.now,
        )
        .unwrap();
        self.applied.insert(id, Vec::new());
        self.cores.insert(id, core);
        self.process(id);
    }

    fn core(&mut self, id: NodeId) -> &mut Core {
        self.cores.get_mut(&id).unwrap()
    }

    fn process(&mut self, id: NodeId) {
        while let Some(core) = self.cores.get_mut(&id)
            && core.has_ready()
        {
            let ready = core.take_ready().unwrap();
            if ready.is_empty() {
                break;
            }
            for r in &ready.records {
                if let LogRecord::ChosenPrefix { upto } = r {
                    let w = self.prefix_written.entry(id).or_default();
                    *w = (*w).max(*upto);
                }
            }
            if ready.sync {
                *self.syncs.entry(id).or_default() += 1;
                let w = self.prefix_written.get(&id).copied().unwrap_or(0);
                self.prefix_synced.insert(id, w);
            }
            let synced = self.prefix_synced.get(&id).copied().unwrap_or(0);
            for (_, m) in &ready.messages {
                if let Message::CommitAck { chosen_prefix, .. } = m {
                    assert!(
                        *chosen_prefix <= synced,
                        "node {id} acks chosen prefix {chosen_prefix}, only {synced} is synced"
                    );
                }
            }
            let log = &self.logs[&id];
            log.0.lock().unwrap().extend(ready.records);
            for (to, msg) in ready.messages {
                *self.sent.entry(msg.kind()).or_default() += 1;
                self.wire.push_back((id, to, msg));
            }
            self.applied.get_mut(&id).unwrap().extend(ready.apply);
        }
    }

    /// Delivers every message until the network is quiet.
    fn settle(&mut self) {
        while let Some((from, to, msg)) = self.wire.pop_front() {
            if let Some(core) = self.cores.get_mut(&to) {
                core.step(self.now, from, msg).unwrap();
                self.process(to);
            }
        }
    }

    /// Advances time by `by` in ticks of 10 ms, settling after each.
    fn run(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now += Duration::from_millis(10);
            let ids: Vec<NodeId> = self.cores.keys().copied().collect();
            for id in ids {
                let now = self.now;
                self.core(id).tick(now);
                self.process(id);
            }
            self.settle();
        }
    }

    fn masters(&self) -> Vec<NodeId> {
        self.cores
            .iter()
            .filter(|(_, c)| c.is_master(self.now))
            .map(|(id, _)| *id)
            .collect()
    }

    fn app_items(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.applied[&id]
            .iter()
            .flat_map(|e| e.app.iter().map(|(_, d)| d.clone()))
            .collect()
    }
}

#[test]
fn a_single_node_chooses_alone_and_takes_the_lease() {
    let mut c = Cluster::new(1);
    let now = c.now;
    c.core(1).propose(now, b"hello".to_vec());
    c.process(1);
    assert_eq!(c.app_items(1), vec![b"hello".to_vec()]);
    c.run(Duration::from_secs(3));
    assert_eq!(c.masters(), vec![1]);
}

#[test]
fn a_stable_leader_needs_one_round_trip_per_value() {
    let mut c = Cluster::new(3);
    let now = c.now;
    c.core(1).propose(now, b"first".to_vec());
    c.process(1);
    c.settle();
    assert_eq!(c.sent.get("prepare"), Some(&2), "phase 1 once");
    c.sent.clear();
    // The leader is established: the next value is one Accept per peer, one
    // Accepted back, then a Commit so the followers apply it.
    let now = c.now;
    c.core(1).propose(now, b"second".to_vec());
    c.process(1);
    c.settle();
    assert_eq!(c.sent.get("prepare"), None);
    assert_eq!(c.sent.get("accept"), Some(&2));
    assert_eq!(c.sent.get("accepted"), Some(&2));
    for id in 1..=3 {
        assert_eq!(
            c.app_items(id),
            vec![b"first".to_vec(), b"second".to_vec()],
            "node {id}"
        );
    }
}

#[test]
fn a_follower_syncs_once_per_value_and_acks_only_synced_commits() {
    let mut c = Cluster::new(3);
    let now = c.now;
    c.core(1).propose(now, b"first".to_vec());
    c.process(1);
    c.settle();
    c.syncs.clear();
    for i in 0..10u8 {
        let now = c.now;
        c.core(1).propose(now, vec![i]);
        c.process(1);
        c.settle();
    }
    // One fsync per value (its Accept); the chosen-prefix marker rides on
    // the next one rather than costing its own.
    for id in [2, 3] {
        assert_eq!(c.syncs.get(&id), Some(&10), "node {id}");
    }
    // The leader's heartbeat Commit brings nothing new: the follower syncs
    // its last marker and then acknowledges the whole prefix (the harness
    // asserts no CommitAck runs ahead of an fsync).
    c.run(Duration::from_secs(1));
    for id in [2, 3] {
        assert_eq!(c.prefix_synced[&id], c.prefix_written[&id], "node {id}");
        assert_eq!(
            c.syncs.get(&id),
            Some(&11),
            "node {id}: one extra fsync when idle"
        );
    }
}

#[test]
fn queued_proposals_share_one_instance() {
    let mut c = Cluster::new(3);
    let now = c.now;
    for i in 0..50u8 {
        c.core(1).propose(now, vec![i]);
    }
    c.process(1);
    c.settle();
    let instances = c.applied[&2].iter().filter(|e| !e.app.is_empty()).count();
    assert_eq!(c.app_items(2).len(), 50);
    assert_eq!(instances, 1, "50 items proposed together go in one batch");
}

#[test]
fn the_lease_goes_to_one_node_and_is_renewed() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let masters = c.masters();
    assert_eq!(masters.len(), 1, "{masters:?}");
    let m = masters[0];
    let version = c.cores[&m].system_state().lease.version;
    // Several renewals later the same node still holds it.
    c.run(Duration::from_secs(5));
    assert_eq!(c.masters(), vec![m]);
    assert!(c.cores[&m].system_state().lease.version >= version + 4);
    // Everyone else sees it as master, with time left.
    for (id, core) in &c.cores {
        let (who, left) = core.master(c.now).unwrap();
        assert_eq!(who, m, "node {id}");
        assert!(left > Duration::ZERO);
    }
}

#[test]
fn switchover_hands_the_lease_to_the_named_node() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let old = c.masters()[0];
    let target = if old == 3 { 2 } else { 3 };
    let now = c.now;
    assert!(c.core(old).step_down(now, Some(target)).is_some());
    // The old master stops acting as master before anything is sent.
    assert!(!c.cores[&old].is_master(now));
    c.process(old);
    c.settle();
    c.run(Duration::from_millis(100));
    assert_eq!(c.masters(), vec![target]);
}

#[test]
fn the_lease_length_changes_cluster_wide_and_outlives_its_master() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let m = c.masters()[0];
    let other = if m == 1 { 2 } else { 1 };
    let now = c.now;
    // Refused: too short (under twice the renew interval), or not the master.
    assert!(
        c.core(m)
            .set_lease_duration(now, Duration::from_millis(200))
            .is_err()
    );
    assert!(
        c.core(other)
            .set_lease_duration(now, Duration::from_secs(6))
            .is_err()
    );
    assert!(
        c.core(m)
            .set_lease_duration(now, Duration::from_secs(6))
            .is_ok()
    );
    c.process(m);
    c.settle();
    c.run(Duration::from_millis(100));
    for (id, core) in &c.cores {
        assert_eq!(core.system_state().lease.duration_ms, 6000, "node {id}");
        assert_eq!(core.lease_duration(), Duration::from_secs(6), "node {id}");
    }
    // The others time the lease by the new length (configured: 2 s).
    let (who, left) = c.cores[&other].master(c.now).unwrap();
    assert_eq!(who, m);
    assert!(left > Duration::from_secs(5), "{left:?}");
    // The next master proposes the cluster's length, not its configured one.
    c.core(m).set_may_campaign(false);
    c.run(Duration::from_secs(15));
    let masters = c.masters();
    assert_eq!(masters.len(), 1);
    let m2 = masters[0];
    assert_ne!(m2, m);
    assert_eq!(c.cores[&m2].system_state().lease.duration_ms, 6000);
    let (_, left) = c.cores[&m2].master(c.now).unwrap();
    assert!(left > Duration::from_secs(4), "{left:?}");
}

#[test]
fn a_restarted_master_does_not_resume_its_lease() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let m = c.masters()[0];
    c.start(m); // restart from its log: the log still names it master
    assert!(
        !c.cores[&m].is_master(c.now),
        "a restart never resumes a lease"
    );
    // It may confirm the lease with a fresh proposal, counted from that proposal.
    c.run(Duration::from_millis(200));
    assert_eq!(c.masters(), vec![m]);
}

#[test]
fn a_vetoed_master_lets_its_lease_run_out_and_another_takes_over() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let m = c.masters()[0];
    c.core(m).set_may_campaign(false);
    c.run(Duration::from_secs(5));
    let masters = c.masters();
    assert_eq!(masters.len(), 1);
    assert_ne!(masters[0], m);
}

#[test]
fn a_lagging_follower_catches_up_by_streaming() {
    let mut c = Cluster::new(3);
    let lagging = c.cores.remove(&3).unwrap();
    for i in 0..200u32 {
        let now = c.now;
        c.core(1).propose(now, i.to_le_bytes().to_vec());
        c.process(1);
        c.settle();
    }
    c.cores.insert(3, lagging);
    c.run(Duration::from_millis(500));
    assert_eq!(c.app_items(3), c.app_items(1));
    assert!(c.cores[&3].counters().catch_up_requests_sent > 0);
}
