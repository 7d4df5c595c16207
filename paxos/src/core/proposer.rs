//! The proposer: wins a ballot once (Prepare), then places batches of queued
//! items in consecutive instances with one Accept round each, many in flight.

use super::{Core, Inflight, Leading, Outcome, PromiseInfo, ProposeError, Queued, Role, Slot};
use crate::message::{AcceptedEntry, LogRecord, Message};
use crate::types::{Ballot, InstanceId, NodeId, ProposalId};
use crate::value::{Item, Value};
use std::collections::{BTreeMap, BTreeSet};

impl Core {
    pub(super) fn enqueue(&mut self, item: Item, front: bool) -> ProposalId {
        let id = self.next_proposal;
        self.next_proposal += 1;
        self.counters.items_proposed += 1;
        let queued = Queued {
            id,
            item,
            queued_at: self.now,
        };
        if front {
            self.queue.push_front(queued);
        } else {
            self.queue.push_back(queued);
        }
        id
    }

    /// Places queued items if leading; otherwise starts winning a ballot.
    pub(super) fn flush_queue(&mut self) {
        if self.queue.is_empty() || self.bootstrapping {
            return;
        }
        match &self.role {
            Role::Leading(_) => self.place_batches(),
            Role::Preparing { .. } => {}
            Role::Follower => {
                if self.may_prepare() {
                    self.start_prepare();
                }
            }
        }
    }

    fn start_prepare(&mut self) {
        let me = self.cfg.node_id;
        let ballot = self.max_seen.max(self.promised).next_for(me);
        self.max_seen = ballot;
        // Promise our own ballot durably before anyone sees it: after a crash the
        // node then never reuses it with another value.
        self.promised = ballot;
        self.ready.records.push(LogRecord::Promise { ballot });
        let from = self.chosen_prefix;
        let mut promises = BTreeMap::new();
        if self.system.membership.is_voter(me) {
            promises.insert(
                me,
                PromiseInfo {
                    chosen_prefix: self.chosen_prefix,
                    accepted: self.accepted_from(from),
                },
            );
        }
        self.role = Role::Preparing {
            ballot,
            from,
            promises,
            sent_at: self.now,
        };
        let voters: Vec<NodeId> = self
            .system
            .membership
            .voters
            .keys()
            .copied()
            .filter(|v| *v != me)
            .collect();
        for v in voters {
            self.counters.prepares_sent += 1;
            self.send(v, Message::Prepare { ballot, from });
        }
        self.maybe_won_prepare();
    }

    fn accepted_from(&self, from: InstanceId) -> Vec<AcceptedEntry> {
        self.slots
            .range(from.max(self.chosen_prefix)..)
            .map(|(&instance, s)| AcceptedEntry {
                instance,
                ballot: s.ballot,
                value: s.value.clone(),
                chosen: s.chosen,
            })
            .collect()
    }

    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen_prefix: InstanceId,
        membership_version: u64,
        accepted: Vec<AcceptedEntry>,
    ) {
        let Role::Preparing {
            ballot: ours,
            promises,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *ours != ballot || !self.system.membership.is_voter(from) {
            return;
        }
        self.counters.promises_received += 1;
        if membership_version > self.system.membership.version {
            // A voter knows a newer membership: our majority may be stale. Learn first.
            self.counters.prepare_aborts_stale_membership += 1;
            self.step_down_role();
            self.backoff();
            self.start_catch_up(from);
            return;
        }
        promises.insert(
            from,
            PromiseInfo {
                chosen_prefix,
                accepted,
            },
        );
        self.maybe_won_prepare();
    }

    fn maybe_won_prepare(&mut self) {
        let Role::Preparing {
            ballot, promises, ..
        } = &self.role
        else {
            return;
        };
        // Count only current voters: the membership may have changed since the
        // promise arrived (a checkpoint install, an applied change).
        let membership = &self.system.membership;
        let votes = promises.keys().filter(|n| membership.is_voter(**n)).count();
        if votes < membership.quorum() {
            return;
        }
        let ballot = *ballot;
        let Role::Preparing { promises, .. } = std::mem::replace(&mut self.role, Role::Follower)
        else {
            return;
        };
        self.counters.prepares_won += 1;
        // Instances below the highest chosen prefix are chosen: learn them, don't
        // re-propose them. Above it every promise reports what it accepted.
        let (ahead, max_cp) = promises
            .iter()
            .map(|(n, p)| (*n, p.chosen_prefix))
            .max_by_key(|(_, cp)| *cp)
            .unwrap_or((self.cfg.node_id, self.chosen_prefix));
        let max_cp = max_cp.max(self.chosen_prefix);
        // Per instance: a value known chosen wins; otherwise the highest ballot.
        let mut recovered: BTreeMap<InstanceId, (bool, Ballot, Value)> = BTreeMap::new();
        for entry in promises.into_values().flat_map(|p| p.accepted) {
            if entry.instance < max_cp {
                continue;
            }
            let better = recovered
                .get(&entry.instance)
                .is_none_or(|(chosen, b, _)| (entry.chosen, entry.ballot) > (*chosen, *b));
            if better {
                recovered.insert(entry.instance, (entry.chosen, entry.ballot, entry.value));
            }
        }
        let end = recovered.keys().next_back().map_or(max_cp, |i| i + 1);
        tracing::debug!(%ballot, max_cp, end, "won prepare");
        self.role = Role::Leading(Leading {
            ballot,
            next_instance: max_cp,
            inflight: BTreeMap::new(),
            first_instance: max_cp,
            commit_sent: self.chosen_prefix,
            commit_sent_at: self.now,
            membership_barrier: None,
        });
        for instance in max_cp..end {
            let value = match recovered.remove(&instance) {
                Some((_, _, v)) => v,
                None => {
                    let id = self.new_batch_id();
                    Value::noop(id)
                }
            };
            self.place(instance, value);
        }
        if max_cp > self.chosen_prefix && ahead != self.cfg.node_id {
            self.start_catch_up(ahead);
        }
        if end == max_cp && self.queue.is_empty() {
            // Commit something in our own ballot right away: it tells followers who
            // leads and is the precondition for membership changes.
            let id = self.new_batch_id();
            self.place(max_cp, Value::noop(id));
        }
        self.place_batches();
    }

    /// Places batches of queued items while the pipeline has room.
    fn place_batches(&mut self) {
        loop {
            let Role::Leading(l) = &self.role else { return };
            if l.inflight.len() >= self.cfg.max_inflight
                || l.membership_barrier.is_some()
                || self.queue.is_empty()
            {
                return;
            }
            let waiting_for_more = !l.inflight.is_empty()
                && self.queue.len() < self.cfg.max_batch_items
                && self
                    .queue
                    .front()
                    .is_some_and(|q| self.now < q.queued_at + self.cfg.max_batch_delay);
            if waiting_for_more {
                return;
            }
            let membership_ok = self.membership_change_allowed();
            let mut items = Vec::new();
            let mut ids = Vec::new();
            let mut bytes = 0usize;
            let mut deferred = Vec::new();
            let mut has_membership = false;
            while let Some(q) = self.queue.pop_front() {
                if matches!(q.item, Item::Membership(_)) && (!membership_ok || has_membership) {
                    deferred.push(q);
                    continue;
                }
                let size = q.item.size_hint();
                if !items.is_empty()
                    && (items.len() >= self.cfg.max_batch_items
                        || bytes + size > self.cfg.max_batch_bytes)
                {
                    self.queue.push_front(q);
                    break;
                }
                bytes += size;
                has_membership |= matches!(q.item, Item::Membership(_));
                ids.push(q.id);
                items.push(q.item);
            }
            for q in deferred.into_iter().rev() {
                self.queue.push_front(q);
            }
            if items.is_empty() {
                return; // only membership changes waiting for their turn
            }
            let Role::Leading(l) = &mut self.role else {
                return;
            };
            let instance = l.next_instance;
            if has_membership {
                l.membership_barrier = Some(instance);
            }
            let id = self.new_batch_id();
            self.placed.insert(instance, (id, ids));
            self.place(instance, Value { id, items });
        }
    }

    /// A membership change may start only after this leader committed in its own
    /// ballot and a majority has learned the previous change.
    fn membership_change_allowed(&self) -> bool {
        let Role::Leading(l) = &self.role else {
            return false;
        };
        if self.chosen_prefix <= l.first_instance {
            return false;
        }
        let Some(last) = self.last_membership_instance else {
            return true;
        };
        let me = self.cfg.node_id;
        let learned = self
            .system
            .membership
            .voters
            .keys()
            .filter(|v| {
                let cp = if **v == me {
                    self.chosen_prefix
                } else {
                    self.peer_progress.get(v).copied().unwrap_or(0)
                };
                cp > last
            })
            .count();
        learned >= self.system.membership.quorum()
    }

    /// Sends Accept for `value` at `instance` under the leader's ballot.
    fn place(&mut self, instance: InstanceId, value: Value) {
        let me = self.cfg.node_id;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        l.next_instance = l.next_instance.max(instance + 1);
        let mut acks = BTreeSet::new();
        if self.promised == ballot {
            if self.system.membership.is_voter(me) {
                acks.insert(me);
            }
        } else {
            // We promised a higher ballot meanwhile: this leadership is over.
            self.step_down_role();
            return;
        }
        if let Role::Leading(l) = &mut self.role {
            l.inflight.insert(
                instance,
                Inflight {
                    value: value.clone(),
                    acks,
                    sent_at: self.now,
                },
            );
        }
        self.accept_locally(ballot, instance, value.clone());
        for peer in self.members_except_self() {
            self.counters.accepts_sent += 1;
            self.send(
                peer,
                Message::Accept {
                    ballot,
                    instance,
                    value: value.clone(),
                },
            );
        }
        self.check_chosen(instance);
    }

    pub(super) fn on_accepted(&mut self, from: NodeId, ballot: Ballot, instance: InstanceId) {
        let is_voter = self.system.membership.is_voter(from);
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        self.counters.accepted_received += 1;
        if let Some(inflight) = l.inflight.get_mut(&instance)
            && is_voter
        {
            inflight.acks.insert(from);
        }
        self.check_chosen(instance);
    }

    fn check_chosen(&mut self, instance: InstanceId) {
        let membership = &self.system.membership;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let votes = l.inflight.get(&instance).map_or(0, |f| {
            f.acks.iter().filter(|n| membership.is_voter(**n)).count()
        });
        if votes < membership.quorum() {
            return;
        }
        let Some(inflight) = l.inflight.remove(&instance) else {
            return;
        };
        let ballot = l.ballot;
        self.losses = 0;
        self.counters.instances_chosen_as_leader += 1;
        self.learn_chosen(instance, ballot, inflight.value);
    }

    /// Records that `value` is chosen at `instance`.
    pub(super) fn learn_chosen(&mut self, instance: InstanceId, ballot: Ballot, value: Value) {
        if instance < self.chosen_prefix {
            return;
        }
        match self.slots.get_mut(&instance) {
            Some(slot) if slot.ballot == ballot => slot.chosen = true,
            _ => {
                self.ready.records.push(LogRecord::Chosen {
                    instance,
                    value: value.clone(),
                });
                self.slots.insert(
                    instance,
                    Slot {
                        ballot,
                        value,
                        chosen: true,
                    },
                );
            }
        }
        self.advance_chosen_prefix();
    }

    pub(super) fn on_reject(&mut self, ballot: Ballot, promised: Ballot) {
        self.max_seen = self.max_seen.max(promised);
        let ours = match &self.role {
            Role::Preparing { ballot: b, .. } => *b,
            Role::Leading(l) => l.ballot,
            Role::Follower => return,
        };
        if ours != ballot || promised <= ballot {
            return;
        }
        self.counters.rejections_received += 1;
        self.step_down_role();
        self.backoff();
    }

    pub(super) fn step_down_role(&mut self) {
        if !matches!(self.role, Role::Follower) {
            tracing::debug!(node = self.cfg.node_id, "stepping down as proposer");
        }
        // Instances in flight stay in `placed`: their fate is learned later.
        self.role = Role::Follower;
    }

    pub(super) fn backoff(&mut self) {
        // Randomised exponential backoff: proposers that keep colliding spread out
        // until one of them gets a whole round through.
        let upper = self
            .cfg
            .backoff_min
            .saturating_mul(1 << self.losses.min(16))
            .min(self.cfg.backoff_max);
        self.losses = self.losses.saturating_add(1);
        let wait = self.random_between(self.cfg.backoff_min, upper.max(self.cfg.backoff_min));
        self.backoff_until = self.now + wait;
    }

    pub(super) fn broadcast_commit(&mut self, ballot: Ballot, upto: InstanceId) {
        for peer in self.members_except_self() {
            self.counters.commits_sent += 1;
            self.send(peer, Message::Commit { ballot, upto });
        }
    }

    pub(super) fn proposer_tick(&mut self) {
        let now = self.now;
        let retry = self.cfg.retry_interval;
        let mut resend: Vec<(NodeId, Message)> = Vec::new();
        match &mut self.role {
            Role::Preparing {
                ballot,
                from,
                promises,
                sent_at,
            } if now >= *sent_at + retry => {
                *sent_at = now;
                self.counters.prepare_retries += 1;
                for v in self.system.membership.voters.keys() {
                    if !promises.contains_key(v) && *v != self.cfg.node_id {
                        resend.push((
                            *v,
                            Message::Prepare {
                                ballot: *ballot,
                                from: *from,
                            },
                        ));
                    }
                }
            }
            Role::Leading(l) => {
                let me = self.cfg.node_id;
                let members: Vec<NodeId> = self
                    .system
                    .membership
                    .all()
                    .map(|(id, _)| id)
                    .filter(|id| *id != me)
                    .collect();
                for (instance, f) in l.inflight.iter_mut() {
                    if now < f.sent_at + retry {
                        continue;
                    }
                    f.sent_at = now;
                    self.counters.accept_retries += 1;
                    for peer in &members {
                        if !f.acks.contains(peer) {
                            resend.push((
                                *peer,
                                Message::Accept {
                                    ballot: l.ballot,
                                    instance: *instance,
                                    value: f.value.clone(),
                                },
                            ));
                        }
                    }
                }
                if now >= l.commit_sent_at + self.cfg.commit_interval {
                    l.commit_sent_at = now;
                    l.commit_sent = self.chosen_prefix;
                    let (ballot, upto) = (l.ballot, self.chosen_prefix);
                    self.broadcast_commit(ballot, upto);
                }
            }
            _ => {}
        }
        self.ready.messages.extend(resend);

        // Queued proposals that never found an instance fail.
        let timeout = self.cfg.propose_timeout;
        let mut expired = Vec::new();
        self.queue.retain(|q| {
            let keep = now < q.queued_at + timeout;
            if !keep {
                expired.push(q.id);
            }
            keep
        });
        for id in expired {
            self.counters.proposals_timed_out += 1;
            self.fail_proposal(id, ProposeError::Timeout);
        }
        self.flush_queue();
    }

    pub(super) fn fail_proposal(&mut self, id: ProposalId, err: ProposeError) {
        self.counters.proposals_failed += 1;
        if self.lease.pending.is_some_and(|(p, _, _)| p == id) {
            self.lease.pending = None;
        }
        self.ready.outcomes.push((id, Outcome::Failed(err)));
    }
}
