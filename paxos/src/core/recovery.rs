//! Rebuilding the core's durable state from the log after a restart.

use crate::message::LogRecord;
use crate::types::{Ballot, InstanceId};
use crate::value::SystemState;
use std::collections::BTreeMap;

/// Accumulates log records in append order. Keeps no values (they can be large):
/// the core reads the few it needs back through its `EntryReader`.
#[derive(Debug, Default)]
pub struct Recovery {
    promised: Ballot,
    snapshot: Option<(InstanceId, SystemState)>,
    chosen_prefix: InstanceId,
    /// Newest record per instance: (ballot, known chosen).
    entries: BTreeMap<InstanceId, (Ballot, bool)>,
}

pub(crate) struct Restored {
    pub promised: Ballot,
    pub snapshot: Option<(InstanceId, SystemState)>,
    pub chosen_prefix: InstanceId,
    pub entries: BTreeMap<InstanceId, (Ballot, bool)>,
}

impl Recovery {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, record: &LogRecord) {
        match record {
            LogRecord::Promise { ballot } => self.promised = self.promised.max(*ballot),
            LogRecord::Accepted {
                instance, ballot, ..
            } => {
                // Accepting a ballot implies promising it.
                self.promised = self.promised.max(*ballot);
                let chosen = self.entries.get(instance).is_some_and(|e| e.1);
                self.entries.insert(*instance, (*ballot, chosen));
            }
            LogRecord::Chosen { instance, .. } => {
                self.entries.insert(*instance, (Ballot::ZERO, true));
            }
            LogRecord::ChosenPrefix { upto } => self.chosen_prefix = self.chosen_prefix.max(*upto),
            LogRecord::Snapshot { at, system } => {
                self.snapshot = Some((*at, system.clone()));
                self.chosen_prefix = self.chosen_prefix.max(*at);
                self.entries = self.entries.split_off(at);
            }
        }
    }

    pub(crate) fn finish(self) -> Restored {
        Restored {
            promised: self.promised,
            snapshot: self.snapshot,
            chosen_prefix: self.chosen_prefix,
            entries: self.entries,
        }
    }

    /// Highest ballot found; also what the node must propose above.
    pub fn promised(&self) -> Ballot {
        self.promised
    }
}
