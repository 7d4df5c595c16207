//! The master lease, a built-in state machine.
//!
//! The replicated value is {master, version, duration}; every change is a
//! compare-and-set on the version, applied in log order. Time is local and
//! monotonic: the master counts its lease from the moment it PROPOSED, everyone
//! else from the moment they LEARNED it, so the others always believe the lease
//! ends later than the master does. `lease_drift` widens the gap on both sides to
//! cover clock-rate differences between nodes.

use super::{Core, Outcome, ProposeError};
use crate::types::{InstanceId, NodeId, ProposalId, Time};
use crate::value::{Item, LeaseProposal};
use std::time::Duration;

impl Core {
    /// True while this node holds the lease by its own, conservative, clock.
    pub fn is_master(&self, now: Time) -> bool {
        self.system.lease.master == Some(self.cfg.node_id)
            && self.lease.self_until.is_some_and(|until| now < until)
    }

    /// The master as this node sees it, with the lease time left. For this node
    /// that is its own (shorter) view; for another node, the time until this node
    /// would start a campaign.
    /// The version of the lease value this node last applied (it moves on
    /// every grant and renewal; one version has at most one holder).
    pub fn lease_version(&self) -> u64 {
        self.system.lease.version
    }

    pub fn master(&self, now: Time) -> Option<(NodeId, Duration)> {
        if self.is_master(now) {
            let until = self.lease.self_until?;
            return Some((self.cfg.node_id, until - now));
        }
        let master = self.system.lease.master?;
        if master == self.cfg.node_id || now >= self.lease.expires_at {
            return None;
        }
        Some((master, self.lease.expires_at - now))
    }

    /// The application's veto: while false, this node neither campaigns nor renews
    /// (so a master that turns unhealthy lets its lease run out).
    pub fn set_may_campaign(&mut self, allowed: bool) {
        self.may_campaign = allowed;
    }

    /// Gives up the lease at once, handing it to `to` (or to nobody, so anyone
    /// healthy may campaign straight away). Returns the proposal id, or None if
    /// this node is not master.
    pub fn step_down(&mut self, now: Time, to: Option<NodeId>) -> Option<ProposalId> {
        self.advance_time(now);
        if !self.is_master(now) {
            return None;
        }
        // Stop acting as master before the proposal even leaves.
        self.lease.self_until = None;
        self.counters.lease_lost += 1;
        let item = self.lease_item(to);
        Some(self.enqueue(item, true))
    }

    /// Changes the cluster's lease length (the master only): a renewal that
    /// carries the new length. Every node times the lease by the length in
    /// the chosen value, and every later master proposes the length of the
    /// last chosen lease value, so the change is cluster-wide and outlives
    /// this master. At least twice the renew interval.
    pub fn set_lease_duration(
        &mut self,
        now: Time,
        duration: Duration,
    ) -> Result<ProposalId, ProposeError> {
        self.advance_time(now);
        if !self.is_master(now) {
            return Err(ProposeError::Rejected(
                "only the master changes the lease length".into(),
            ));
        }
        let min = self.cfg.renew_interval() * 2;
        if duration < min {
            return Err(ProposeError::Rejected(format!(
                "a lease of {duration:?} is shorter than twice the renew interval ({min:?})"
            )));
        }
        if self.lease.pending.is_some() {
            return Err(ProposeError::Rejected(
                "a lease renewal is in flight; try again".into(),
            ));
        }
        let item = Item::Lease(LeaseProposal {
            node: Some(self.cfg.node_id),
            expect_version: self.system.lease.version,
            duration_ms: duration.as_millis() as u64,
        });
        let id = self.enqueue(item, true);
        self.lease.pending = Some((id, self.system.lease.version, self.now));
        self.lease.last_proposed = self.now;
        Ok(id)
    }

    /// The lease length this node proposes: the last chosen lease value's
    /// (see [`Core::set_lease_duration`]), or the configured one before any.
    pub fn lease_duration(&self) -> Duration {
        match self.system.lease.duration_ms {
            0 => self.cfg.lease_duration,
            ms => Duration::from_millis(ms),
        }
    }

    /// How long a node that knows nothing newer respects whatever lease may
    /// be out there: the longer of the configured and the last known length.
    pub(super) fn lease_wait_unknown(&self) -> Duration {
        self.cfg
            .lease_others(self.cfg.lease_duration.max(self.lease_duration()))
    }

    pub(super) fn lease_tick(&mut self) {
        let me = self.cfg.node_id;
        if !self.cfg.lease_enabled
            || self.bootstrapping
            || !self.may_campaign
            || !self.system.membership.is_voter(me)
            || self.lease.pending.is_some()
        {
            return;
        }
        let now = self.now;
        if self.is_master(now) {
            if now >= self.lease.last_proposed + self.cfg.renew_interval() {
                self.counters.lease_renewals += 1;
                self.propose_lease();
            }
        } else if self.system.lease.master == Some(me)
            || now >= self.lease.expires_at + self.lease.campaign_jitter
        {
            // Either the lease was handed to us (or we held it before a restart) and
            // we must confirm it with a fresh proposal, or it ran out: campaign.
            self.counters.lease_campaigns += 1;
            self.propose_lease();
        }
    }

    pub(super) fn set_lease_expiry(&mut self, at: Time) {
        self.lease.expires_at = at;
        self.lease.campaign_jitter = self.random_between(Time::ZERO, self.cfg.lease_duration / 5);
    }

    fn propose_lease(&mut self) {
        let item = self.lease_item(Some(self.cfg.node_id));
        let id = self.enqueue(item, true);
        self.lease.pending = Some((id, self.system.lease.version, self.now));
        self.lease.last_proposed = self.now;
    }

    pub(super) fn apply_lease(
        &mut self,
        instance: InstanceId,
        p: &LeaseProposal,
        pid: Option<ProposalId>,
    ) {
        let ours = pid.is_some_and(|id| self.lease.pending.is_some_and(|(p, _, _)| p == id));
        let proposed_at = self.lease.pending.map(|(_, _, at)| at);
        if ours {
            self.lease.pending = None;
        }
        if p.expect_version != self.system.lease.version {
            if let Some(pid) = pid {
                self.fail_proposal(
                    pid,
                    ProposeError::Rejected(format!(
                        "lease version is {}, proposal expected {}",
                        self.system.lease.version, p.expect_version
                    )),
                );
            }
            return;
        }
        let was_master = self.is_master(self.now);
        self.system.lease.master = p.node;
        self.system.lease.version += 1;
        self.system.lease.duration_ms = p.duration_ms;
        self.record_system_change(instance);
        let duration = Duration::from_millis(p.duration_ms);
        let me = self.cfg.node_id;
        match proposed_at {
            Some(at) if ours && p.node == Some(me) => {
                self.lease.self_until = Some(at + self.cfg.lease_self(duration));
                if !was_master {
                    self.counters.lease_acquired += 1;
                    tracing::info!(
                        node = me,
                        version = self.system.lease.version,
                        "lease acquired"
                    );
                }
            }
            _ => {
                if was_master {
                    self.counters.lease_lost += 1;
                    tracing::info!(node = me, "lease lost");
                }
                self.lease.self_until = None;
            }
        }
        if p.node.is_none() || (p.node == Some(me) && !ours) {
            // The lease was released or handed to us: the proposer that was at work
            // stepped aside on purpose, so there is no leader to stay quiet for.
            self.last_foreign_progress = None;
        }
        let expiry = match p.node {
            None => self.now,
            Some(_) => self.now + self.cfg.lease_others(duration),
        };
        self.set_lease_expiry(expiry);
        if let Some(pid) = pid {
            self.ready.outcomes.push((pid, Outcome::Applied(instance)));
        }
    }
}
