//! Where a connection goes: pure functions of what the proxy last heard from
//! the binlog servers (no I/O here; `discovery` fills [`Topology`] in).
//!
//! - Read-write: the lease holder, as the *local* binlog server sees it, but
//!   only until that lease ends by the local clock, and only once its agent
//!   reports the promotion done (`role: master`). Anything else is "no
//!   master": an election or a promotion is under way.
//! - Read-only: the local MariaDB if it is healthy, else the healthy node
//!   with the least lag. Healthy: its binlog server answered lately, its
//!   MariaDB is up, it is a replica (or the master, when allowed), and it has
//!   been caught up with the chosen log within `ro_max_lag`.

use std::time::{Duration, Instant};

/// A node as the cluster file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub id: u64,
    pub name: String,
    /// Its MariaDB, `host:port`.
    pub mariadb: String,
}

/// What a node's binlog server last said about it (`GET /route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The agent's role (`replica`, `master`, `promoting`, ...); `None`
    /// when the binlog server runs without an agent.
    pub role: Option<String>,
    pub mariadb_up: bool,
    /// Staleness bound of the node's MariaDB (see `agent::AgentStatus`).
    pub lag_ms: Option<u64>,
}

/// The master lease as the local binlog server reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseReport {
    pub master: u64,
    /// When it ends by this process's clock: the time the question was
    /// *sent*, plus the remaining lease in the answer (conservative).
    pub until: Instant,
}

/// Everything routing reads.
#[derive(Debug, Clone)]
pub struct Topology {
    /// This proxy's node.
    pub me: u64,
    /// In cluster-file order.
    pub nodes: Vec<NodeAddr>,
    /// Latest report per node (same order); `None`: no answer lately.
    pub reports: Vec<Option<NodeReport>>,
    /// The lease as the local binlog server sees it; `None`: vacant or
    /// unknown.
    pub lease: Option<LeaseReport>,
}

/// The read-only port's choices (from `proxy.*` in the cluster file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    pub max_lag: Duration,
    pub include_master: bool,
}

impl Topology {
    /// A topology that knows nothing yet.
    pub fn new(me: u64, nodes: Vec<NodeAddr>) -> Self {
        let reports = vec![None; nodes.len()];
        Topology {
            me,
            nodes,
            reports,
            lease: None,
        }
    }

    pub(crate) fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Replaces the node list (the cluster file changed): reports are kept
    /// for the nodes that stay with the same MariaDB address, a node that is
    /// new or moved has none until its binlog server answers.
    pub fn set_nodes(&mut self, nodes: Vec<NodeAddr>) {
        let reports = nodes
            .iter()
            .map(|n| {
                let i = self.index_of(n.id)?;
                if self.nodes[i] == *n {
                    self.reports[i].clone()
                } else {
                    None
                }
            })
            .collect();
        self.nodes = nodes;
        self.reports = reports;
    }

    /// The node whose MariaDB takes writes now, if any.
    pub fn writable_master(&self, now: Instant) -> Option<&NodeAddr> {
        let lease = self.lease?;
        if lease.until <= now {
            return None;
        }
        let i = self.index_of(lease.master)?;
        match &self.reports[i] {
            // The promotion is done only when its agent says so; a node
            // without an agent is trusted on the lease alone.
            Some(r) => match r.role.as_deref() {
                None | Some("master") => Some(&self.nodes[i]),
                Some(_) => None,
            },
            // Its binlog server does not answer us: its MariaDB may still
            // take writes, but we cannot tell whether it finished promoting.
            None => None,
        }
    }

    /// Where a read-only connection goes; `None`: no healthy node.
    pub fn read_target(&self, policy: &ReadPolicy, now: Instant) -> Option<&NodeAddr> {
        let lease_holder = self.lease.filter(|l| l.until > now).map(|l| l.master);
        let healthy = |i: usize| -> Option<u64> {
            let r = self.reports[i].as_ref()?;
            if !r.mariadb_up {
                return None;
            }
            let is_master =
                r.role.as_deref() == Some("master") || lease_holder == Some(self.nodes[i].id);
            let role_ok = match r.role.as_deref() {
                Some("replica") => !is_master || policy.include_master,
                Some("master") | None => policy.include_master,
                _ => false,
            };
            if !role_ok {
                return None;
            }
            let lag = r.lag_ms.unwrap_or(0);
            (lag <= policy.max_lag.as_millis() as u64).then_some(lag)
        };
        if let Some(i) = self.index_of(self.me)
            && healthy(i).is_some()
        {
            return Some(&self.nodes[i]);
        }
        (0..self.nodes.len())
            .filter_map(|i| healthy(i).map(|lag| (lag, i)))
            .min()
            .map(|(_, i)| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        let nodes = (1..=3)
            .map(|id| NodeAddr {
                id,
                name: format!("node{id}"),
                mariadb: format!("127.0.0.1:{}", 17005 + 10 * (id - 1)),
            })
            .collect();
        Topology::new(1, nodes)
    }

    fn report(role: &str, lag_ms: u64) -> Option<NodeReport> {
        Some(NodeReport {
            role: Some(role.into()),
            mariadb_up: true,
            lag_ms: Some(lag_ms),
        })
    }

    const POLICY: ReadPolicy = ReadPolicy {
        max_lag: Duration::from_secs(5),
        include_master: true,
    };

    #[test]
    fn no_lease_no_master() {
        let mut t = topo();
        t.reports = vec![
            report("replica", 0),
            report("master", 0),
            report("replica", 0),
        ];
        assert_eq!(t.writable_master(Instant::now()), None);
    }

    #[test]
    fn master_only_while_the_lease_lasts_and_once_promoted() {
        let now = Instant::now();
        let mut t = topo();
        t.reports = vec![
            report("replica", 0),
            report("promoting", 0),
            report("replica", 0),
        ];
        t.lease = Some(LeaseReport {
            master: 2,
            until: now + Duration::from_secs(1),
        });
        assert_eq!(t.writable_master(now), None, "still promoting");
        t.reports[1] = report("master", 0);
        assert_eq!(t.writable_master(now).map(|n| n.id), Some(2));
        assert_eq!(
            t.writable_master(now + Duration::from_secs(1)),
            None,
            "the lease has ended by our clock"
        );
        t.reports[1] = None;
        assert_eq!(t.writable_master(now), None, "its binlog server is silent");
    }

    #[test]
    fn reads_prefer_the_local_node() {
        let now = Instant::now();
        let mut t = topo();
        t.reports = vec![
            report("replica", 100),
            report("master", 0),
            report("replica", 0),
        ];
        assert_eq!(t.read_target(&POLICY, now).map(|n| n.id), Some(1));
    }

    #[test]
    fn reads_leave_a_lagging_or_down_local_node_for_the_least_lagging_other() {
        let now = Instant::now();
        let mut t = topo();
        t.reports = vec![
            report("replica", 6000),
            report("replica", 300),
            report("replica", 200),
        ];
        assert_eq!(t.read_target(&POLICY, now).map(|n| n.id), Some(3));
        t.reports[0] = Some(NodeReport {
            role: Some("replica".into()),
            mariadb_up: false,
            lag_ms: None,
        });
        assert_eq!(t.read_target(&POLICY, now).map(|n| n.id), Some(3));
        t.reports[2] = None;
        assert_eq!(t.read_target(&POLICY, now).map(|n| n.id), Some(2));
        t.reports[1] = report("diverged", 0);
        assert_eq!(t.read_target(&POLICY, now), None);
    }

    #[test]
    fn the_master_serves_reads_only_when_allowed() {
        let now = Instant::now();
        let mut t = topo();
        t.me = 2;
        t.reports = vec![
            report("replica", 0),
            report("master", 0),
            report("replica", 0),
        ];
        assert_eq!(t.read_target(&POLICY, now).map(|n| n.id), Some(2));
        let exclude = ReadPolicy {
            include_master: false,
            ..POLICY
        };
        assert_eq!(t.read_target(&exclude, now).map(|n| n.id), Some(1));
        // A lease holder still promoting counts as the master too.
        t.reports[1] = report("replica", 0);
        t.lease = Some(LeaseReport {
            master: 2,
            until: now + Duration::from_secs(1),
        });
        assert_eq!(t.read_target(&exclude, now).map(|n| n.id), Some(1));
    }

    #[test]
    fn a_new_node_list_keeps_the_reports_of_the_nodes_that_stay() {
        let mut t = topo();
        t.reports[0] = report("replica", 0);
        t.reports[1] = report("master", 0);
        t.reports[2] = report("replica", 0);
        let mut nodes = t.nodes.clone();
        nodes.remove(0); // node 1 removed
        nodes[1].mariadb = "10.0.0.3:3306".into(); // node 3 moved
        nodes.push(NodeAddr {
            id: 4,
            name: "node4".into(),
            mariadb: "127.0.0.1:3406".into(),
        });
        t.set_nodes(nodes);
        assert_eq!(
            t.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(t.reports[0], report("master", 0));
        assert_eq!(t.reports[1], None, "moved: no report until it answers");
        assert_eq!(t.reports[2], None, "new: no report yet");
    }
}
