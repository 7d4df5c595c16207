//! The learner: finds out what was chosen (commit points, catch-up streaming,
//! checkpoint install), applies it in order, and compacts the log.

use super::{Compaction, Core, CoreError, Outcome, ProposeError, Slot};
use crate::message::{LogRecord, Message};
use crate::types::{Ballot, InstanceId, NodeId, Time};
use crate::value::{ChosenEntry, Item, SystemState, Value};
use std::time::Duration;

/// How long a checkpoint transfer may take before another is tried.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(60);

impl Core {
    pub(super) fn on_commit(&mut self, from: NodeId, ballot: Ballot, upto: InstanceId) {
        self.max_seen = self.max_seen.max(ballot);
        // A newer leader is committing: whatever we lead is over. (Our own Commit
        // must only ever cover values we chose at our ballot.)
        self.yield_to(ballot);
        if self.bootstrapping {
            self.request_checkpoint(from);
            return;
        }
        if upto > self.chosen_prefix {
            for (_, slot) in self.slots.range_mut(self.chosen_prefix..upto) {
                if slot.ballot == ballot {
                    slot.chosen = true;
                }
            }
            let before = self.chosen_prefix;
            self.advance_chosen_prefix();
            if self.chosen_prefix > before && from != self.cfg.node_id {
                self.last_foreign_progress = Some(self.now);
            }
            if self.chosen_prefix < upto {
                // We missed some of the leader's values (or hold older ones).
                self.start_catch_up(from);
            }
        }
        self.send(
            from,
            Message::CommitAck {
                chosen_prefix: self.chosen_prefix,
                membership_version: self.system.membership.version,
            },
        );
    }

    pub(super) fn advance_chosen_prefix(&mut self) {
        let before = self.chosen_prefix;
        while self
            .slots
            .get(&self.chosen_prefix)
            .is_some_and(|s| s.chosen)
        {
            self.chosen_prefix += 1;
        }
        self.counters.instances_learned += self.chosen_prefix - before;
    }

    pub(super) fn start_catch_up(&mut self, peer: NodeId) {
        if peer == self.cfg.node_id || self.catch_up.is_some() || self.bootstrapping {
            return;
        }
        self.counters.catch_up_requests_sent += 1;
        self.catch_up = Some(super::CatchUp {
            peer,
            sent_at: self.now,
        });
        self.send(
            peer,
            Message::CatchUpRequest {
                from: self.chosen_prefix,
                max_bytes: self.cfg.catch_up_bytes,
            },
        );
    }

    pub(super) fn on_catch_up_request(
        &mut self,
        from: NodeId,
        start: InstanceId,
        max_bytes: u64,
    ) -> Result<(), CoreError> {
        if self.bootstrapping {
            return Ok(());
        }
        if start < self.log_start {
            self.send(
                from,
                Message::CatchUpTruncated {
                    log_start: self.log_start,
                },
            );
            return Ok(());
        }
        self.counters.catch_up_requests_served += 1;
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        let mut instance = start;
        while instance < self.chosen_prefix && (entries.is_empty() || bytes < max_bytes) {
            let value = self.value_of(instance)?;
            bytes += value.size_hint() as u64;
            entries.push((instance, value));
            instance += 1;
        }
        self.counters.catch_up_bytes_sent += bytes;
        self.send(
            from,
            Message::CatchUpResponse {
                entries,
                chosen_prefix: self.chosen_prefix,
            },
        );
        Ok(())
    }

    pub(super) fn on_catch_up_response(
        &mut self,
        from: NodeId,
        entries: Vec<(InstanceId, Value)>,
        their_prefix: InstanceId,
    ) {
        if self.catch_up.as_ref().is_some_and(|c| c.peer == from) {
            self.catch_up = None;
        }
        // Learning from elsewhere what was chosen where we lead means someone else
        // chose there: stop leading before our commit point could vouch for it.
        if let super::Role::Leading(l) = &self.role
            && entries.iter().any(|(i, _)| *i >= l.first_instance)
        {
            self.step_down_role();
            self.backoff();
        }
        for (instance, value) in entries {
            if instance != self.chosen_prefix {
                // Not contiguous with what we know (stale or duplicate): skip it.
                continue;
            }
            self.counters.catch_up_bytes_received += value.size_hint() as u64;
            self.ready.records.push(LogRecord::Chosen {
                instance,
                value: value.clone(),
            });
            // A chosen value is also the only value any acceptor may hold here, so it
            // safely replaces what our acceptor had.
            self.slots.insert(
                instance,
                Slot {
                    ballot: Ballot::ZERO,
                    value,
                    chosen: true,
                },
            );
            self.advance_chosen_prefix();
        }
        if their_prefix > self.chosen_prefix {
            self.start_catch_up(from);
        }
    }

    pub(super) fn on_catch_up_truncated(&mut self, from: NodeId, log_start: InstanceId) {
        if self.catch_up.as_ref().is_some_and(|c| c.peer == from) {
            self.catch_up = None;
        }
        if log_start > self.chosen_prefix {
            self.request_checkpoint(from);
        }
    }

    fn request_checkpoint(&mut self, peer: NodeId) {
        if peer == self.cfg.node_id {
            return;
        }
        if let Some((_, since)) = self.fetching_checkpoint
            && self.now < since + CHECKPOINT_TIMEOUT
        {
            return;
        }
        self.fetching_checkpoint = Some((peer, self.now));
        self.ready.fetch_checkpoint = Some(peer);
    }

    /// The driver could not complete the checkpoint transfer; a later contact
    /// retries it.
    pub fn checkpoint_fetch_failed(&mut self) {
        self.fetching_checkpoint = None;
    }

    /// Whether a peer's checkpoint whose log starts at `log_start` is still of use:
    /// only while this node lacks chosen instances below it. A driver asks this
    /// before it makes a fetched checkpoint the application's state, since the
    /// node may have caught up by other means during the transfer.
    pub fn wants_checkpoint(&self, log_start: InstanceId) -> bool {
        self.bootstrapping || self.chosen_prefix < log_start
    }

    /// The application installed a peer's checkpoint covering every instance below
    /// `app_checkpoint`; `log_start` and `system` are the peer's log start and the
    /// system state there. The log is rewritten to start at `log_start` and the
    /// rest is learned from `peer`. Returns false, changing nothing, if the
    /// checkpoint is no longer wanted (see [`Core::wants_checkpoint`]).
    pub fn install_checkpoint(
        &mut self,
        now: Time,
        peer: NodeId,
        log_start: InstanceId,
        system: SystemState,
        app_checkpoint: InstanceId,
    ) -> bool {
        self.advance_time(now);
        if !self.wants_checkpoint(log_start) {
            self.fetching_checkpoint = None;
            return false;
        }
        // Every slot at or above `log_start` is still in memory (nothing there was
        // applied yet), so the header below loses no promise, accept or choice.
        self.counters.checkpoint_installs += 1;
        self.fetching_checkpoint = None;
        self.bootstrapping = false;
        // Keep what our acceptor promised and accepted at or above the new start:
        // a leader may be counting on it.
        self.slots = self.slots.split_off(&log_start);
        let mut header = vec![
            LogRecord::Promise {
                ballot: self.promised,
            },
            LogRecord::Snapshot {
                at: log_start,
                system: system.clone(),
            },
        ];
        for (&instance, slot) in &self.slots {
            header.push(if slot.chosen {
                LogRecord::Chosen {
                    instance,
                    value: slot.value.clone(),
                }
            } else {
                LogRecord::Accepted {
                    instance,
                    ballot: slot.ballot,
                    value: slot.value.clone(),
                }
            });
        }
        self.ready.compact = Some(Compaction {
            below: InstanceId::MAX,
            header,
        });
        self.log_start = log_start;
        self.log_start_system = system.clone();
        self.system = system;
        self.system_history.clear();
        self.applied = log_start;
        self.chosen_prefix = log_start;
        self.advance_chosen_prefix();
        self.durable_chosen_prefix = self.chosen_prefix;
        self.app_checkpoint = app_checkpoint.max(log_start);
        self.set_lease_expiry(self.now + self.lease_wait_unknown());
        self.ready.membership = Some(self.system.membership.clone());
        self.catch_up = None;
        self.start_catch_up(peer);
        // Our proposals in instances the checkpoint covers: their fate and output
        // are in the peer's state, not knowable here.
        let covered: Vec<InstanceId> = self
            .placed
            .range(..self.app_checkpoint)
            .map(|(i, _)| *i)
            .collect();
        for instance in covered {
            if let Some((_, ids)) = self.placed.remove(&instance) {
                for id in ids {
                    self.fail_proposal(id, ProposeError::Indeterminate);
                }
            }
        }
        true
    }

    /// True while this node has no system state yet (a joiner before its first
    /// checkpoint install).
    pub fn is_bootstrapping(&self) -> bool {
        self.bootstrapping
    }

    pub(super) fn learner_tick(&mut self) {
        if let Some(c) = &self.catch_up
            && self.now >= c.sent_at + self.cfg.catch_up_timeout
        {
            // Ask someone else: the next member after the silent one.
            self.counters.catch_up_timeouts += 1;
            let silent = c.peer;
            self.catch_up = None;
            let members = self.members_except_self();
            if let Some(pos) = members.iter().position(|m| *m == silent) {
                let next = members[(pos + 1) % members.len()];
                self.start_catch_up(next);
            } else if let Some(first) = members.first() {
                self.start_catch_up(*first);
            }
        }
    }

    /// Applies chosen instances in order, a bounded amount per `Ready`.
    pub(super) fn pump_apply(&mut self) -> Result<(), CoreError> {
        let mut bytes = 0usize;
        while self.applied < self.chosen_prefix && bytes < self.cfg.max_apply_bytes {
            let instance = self.applied;
            let value = match self.slots.remove(&instance) {
                Some(slot) => slot.value,
                None => self
                    .reader
                    .read(instance)
                    .map_err(CoreError::Storage)?
                    .ok_or(CoreError::MissingEntry(instance))?,
            };
            bytes += value.size_hint();
            self.apply_value(instance, value);
            self.applied += 1;
        }
        Ok(())
    }

    fn apply_value(&mut self, instance: InstanceId, value: Value) {
        // Which of our proposals were in this instance, if any.
        let batch = value.id;
        let mut ours: Option<Vec<u64>> = None;
        if let Some((batch, ids)) = self.placed.remove(&instance) {
            if batch == value.id {
                ours = Some(ids);
            } else {
                for id in ids {
                    self.fail_proposal(id, ProposeError::NotChosen);
                }
            }
        }
        self.counters.items_chosen += value.items.len() as u64;
        let mut app = Vec::new();
        for (k, item) in value.items.into_iter().enumerate() {
            let pid = ours.as_ref().and_then(|ids| ids.get(k).copied());
            match item {
                Item::App(data) => {
                    if instance >= self.app_checkpoint {
                        app.push((pid, data));
                    } else if let Some(pid) = pid {
                        // The application got this from a checkpoint: no output here.
                        self.fail_proposal(pid, ProposeError::Indeterminate);
                    }
                }
                Item::Lease(p) => self.apply_lease(instance, &p, pid),
                Item::Membership(change) => {
                    let result = self.system.membership.apply(&change);
                    match result {
                        Ok(()) => {
                            self.counters.membership_changes += 1;
                            self.last_membership_instance = Some(instance);
                            self.record_system_change(instance);
                            self.ready.membership = Some(self.system.membership.clone());
                            if !self.system.membership.contains(self.cfg.node_id) {
                                self.lease.self_until = None;
                            }
                            if let Some(pid) = pid {
                                self.ready.outcomes.push((pid, Outcome::Applied(instance)));
                            }
                        }
                        Err(reason) => {
                            if let Some(pid) = pid {
                                self.fail_proposal(pid, ProposeError::Rejected(reason));
                            }
                        }
                    }
                }
            }
        }
        if let super::Role::Leading(l) = &mut self.role
            && l.membership_barrier == Some(instance)
        {
            l.membership_barrier = None;
        }
        if instance >= self.app_checkpoint {
            self.ready.apply.push(ChosenEntry {
                instance,
                batch,
                app,
            });
        }
    }

    pub(super) fn record_system_change(&mut self, instance: InstanceId) {
        self.system_history
            .push((instance + 1, self.system.clone()));
    }

    /// The application made every instance below `checkpoint` durable on its side.
    /// Log entries far enough below it are dropped.
    pub fn set_app_checkpoint(&mut self, checkpoint: InstanceId) {
        self.app_checkpoint = self.app_checkpoint.max(checkpoint);
        let keep = self.cfg.keep_instances;
        let upto = self.app_checkpoint.min(self.applied);
        let below = upto.saturating_sub(keep);
        // Compact in steps of at least half the window, not on every instance.
        if below <= self.log_start || below - self.log_start < (keep / 2).max(1) {
            return;
        }
        if self.ready.compact.is_some() {
            return;
        }
        let system = self.system_at(below);
        self.counters.compactions += 1;
        self.ready.compact = Some(Compaction {
            below,
            header: vec![
                LogRecord::Promise {
                    ballot: self.promised,
                },
                LogRecord::Snapshot {
                    at: below,
                    system: system.clone(),
                },
                LogRecord::ChosenPrefix {
                    upto: self.chosen_prefix,
                },
            ],
        });
        self.log_start = below;
        self.log_start_system = system;
        self.system_history.retain(|(at, _)| *at > below);
    }
}
