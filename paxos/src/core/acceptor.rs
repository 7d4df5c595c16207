//! The acceptor: promises and accepts. Every promise or accept it grants is in
//! `Ready::records`, so it is durable before the reply (in `Ready::messages`) leaves.

use super::{Core, Role, Slot};
use crate::message::{AcceptedEntry, LogRecord, Message};
use crate::types::{Ballot, InstanceId, NodeId};
use crate::value::Value;

impl Core {
    pub(super) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, start: InstanceId) {
        self.max_seen = self.max_seen.max(ballot);
        // Equal ballots are the same proposer asking again: answer again.
        if ballot < self.promised {
            self.reject(from, ballot);
            return;
        }
        if ballot > self.promised {
            self.promised = ballot;
            self.ready.records.push(LogRecord::Promise { ballot });
            self.yield_to(ballot);
        }
        let floor = start.max(self.chosen_prefix);
        let accepted = self
            .slots
            .range(floor..)
            .map(|(&instance, slot)| AcceptedEntry {
                instance,
                ballot: slot.ballot,
                value: slot.value.clone(),
                chosen: slot.chosen,
            })
            .collect();
        self.send(
            from,
            Message::Promise {
                ballot,
                chosen_prefix: self.chosen_prefix,
                membership_version: self.system.membership.version,
                accepted,
            },
        );
    }

    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        instance: InstanceId,
        value: Value,
    ) {
        self.max_seen = self.max_seen.max(ballot);
        if ballot < self.promised {
            self.reject(from, ballot);
            return;
        }
        if ballot > self.promised {
            // Durable even when no Accepted record follows (a value already known
            // chosen, a resent Accept): the reply below vouches for this ballot.
            self.promised = ballot;
            self.ready.records.push(LogRecord::Promise { ballot });
            self.yield_to(ballot);
        }
        self.accept_locally(ballot, instance, value);
        self.send(from, Message::Accepted { ballot, instance });
    }

    fn reject(&mut self, to: NodeId, ballot: Ballot) {
        self.counters.rejections_sent += 1;
        let promised = self.promised;
        self.send(to, Message::Reject { ballot, promised });
    }

    /// Records an accepted value (ballot already checked against the promise).
    pub(super) fn accept_locally(&mut self, ballot: Ballot, instance: InstanceId, value: Value) {
        if instance < self.chosen_prefix {
            // Already known chosen: Paxos guarantees the same value, nothing to store.
            return;
        }
        if let Some(slot) = self.slots.get_mut(&instance) {
            if slot.ballot == ballot {
                return; // a resent Accept: one value per ballot and instance
            }
            slot.ballot = ballot;
            if !slot.chosen {
                slot.value = value.clone();
            }
        } else {
            self.slots.insert(
                instance,
                Slot {
                    ballot,
                    value: value.clone(),
                    chosen: false,
                },
            );
        }
        self.ready.records.push(LogRecord::Accepted {
            instance,
            ballot,
            value,
        });
    }

    /// A higher ballot is active: stop preparing or leading under a lower one.
    pub(super) fn yield_to(&mut self, ballot: Ballot) {
        let ours = match &self.role {
            Role::Preparing { ballot: b, .. } => Some(*b),
            Role::Leading(l) => Some(l.ballot),
            Role::Follower => None,
        };
        if ours.is_some_and(|b| b < ballot) {
            self.step_down_role();
            // Competing at once would only knock the other proposer out in turn.
            self.backoff();
        }
    }
}
