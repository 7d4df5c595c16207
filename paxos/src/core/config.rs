//! Tunables of the consensus core. Durations are in the node's monotonic time.

use crate::types::NodeId;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub node_id: NodeId,
    /// Random per process start; makes batch ids unique across restarts.
    pub incarnation: u64,
    /// Seed for the core's own randomness (backoff jitter). Deterministic in simulation.
    pub rng_seed: u64,

    /// Most client items in one instance.
    pub max_batch_items: usize,
    /// Most bytes in one instance (a single larger item still goes alone).
    pub max_batch_bytes: usize,
    /// How long a partial batch may wait for more items while instances are in flight.
    pub max_batch_delay: Duration,
    /// Most instances in flight at once (pipelining window).
    pub max_inflight: usize,

    /// Resend an unanswered Accept or Prepare after this long.
    pub retry_interval: Duration,
    /// A leader repeats its commit point this often, so followers that missed it learn.
    pub commit_interval: Duration,
    /// A queued proposal that has not been placed in an instance by then fails.
    pub propose_timeout: Duration,
    /// After losing a ballot, wait a random time before preparing again: at least
    /// `backoff_min`, at most `backoff_min * 2^losses`, capped at `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A node that accepted another proposer's value this recently does not start
    /// a Prepare of its own: it would only interrupt a working leader.
    pub leader_quiet: Duration,
    /// Bytes per catch-up response (flow control: one request in flight).
    pub catch_up_bytes: u64,
    /// A catch-up request unanswered for this long is sent again (maybe to another peer).
    pub catch_up_timeout: Duration,
    /// Bytes of chosen values handed to the application per `Ready`.
    pub max_apply_bytes: usize,

    /// Master lease length.
    pub lease_duration: Duration,
    /// The largest clock-rate error between any two nodes, as a fraction (0.01 = 1%).
    /// The master gives up `lease * drift` early, others wait `lease * drift` longer.
    pub lease_drift: f64,
    /// How often the master renews; `None` means a quarter of the lease.
    pub lease_renew_interval: Option<Duration>,
    /// Whether this node may campaign for the lease at all.
    pub lease_enabled: bool,

    /// Keep at least this many chosen instances below the application checkpoint in
    /// the log, so that briefly lagging peers catch up without a checkpoint install.
    pub keep_instances: u64,
}

impl CoreConfig {
    pub fn new(node_id: NodeId) -> Self {
        CoreConfig {
            node_id,
            incarnation: 0,
            rng_seed: node_id,
            max_batch_items: 1024,
            max_batch_bytes: 4 << 20,
            max_batch_delay: Duration::ZERO,
            max_inflight: 64,
            retry_interval: Duration::from_millis(200),
            commit_interval: Duration::from_millis(100),
            propose_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            leader_quiet: Duration::from_millis(400),
            catch_up_bytes: 8 << 20,
            catch_up_timeout: Duration::from_secs(1),
            max_apply_bytes: 64 << 20,
            lease_duration: Duration::from_secs(3),
            lease_drift: 0.05,
            lease_renew_interval: None,
            lease_enabled: true,
            keep_instances: 10_000,
        }
    }

    /// How long the master itself trusts a lease it proposed at time t: t + this.
    pub fn lease_self(&self, duration: Duration) -> Duration {
        duration.mul_f64((1.0 - self.lease_drift).max(0.0))
    }

    /// How long the others respect a lease they learned at time t: t + this.
    pub fn lease_others(&self, duration: Duration) -> Duration {
        duration.mul_f64(1.0 + self.lease_drift)
    }

    pub fn renew_interval(&self) -> Duration {
        self.lease_renew_interval.unwrap_or(self.lease_duration / 4)
    }
}
