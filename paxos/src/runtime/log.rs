//! Glue between the core and the segment log: recovery at start, and the
//! [`EntryReader`] the core reads old chosen values through.

use super::RuntimeError;
use crate::core::{EntryReader, Recovery};
use crate::message::LogRecord;
use crate::storage::{LogOptions, LogReader, SegmentLog};
use crate::types::InstanceId;
use crate::value::Value;
use std::path::Path;
use tracing::{info, warn};

/// Opens the log in `dir`, verifies it and replays every record into a
/// [`Recovery`]. A record that passed its checksum but does not decode is
/// corruption: the node refuses to start rather than guess.
pub(crate) fn open_log(
    dir: &Path,
    opts: LogOptions,
) -> Result<(SegmentLog, Recovery), RuntimeError> {
    let (mut log, report) = SegmentLog::open(dir, opts)?;
    if report.torn_tail_bytes_cut > 0 {
        warn!(
            ?dir,
            torn_tail_bytes_cut = report.torn_tail_bytes_cut,
            "log ended in a torn record (crash during a write); cut it off"
        );
    }
    let mut recovery = Recovery::new();
    let mut snapshot_at = None;
    let mut count = 0u64;
    for item in log.replay()? {
        let (key, payload) = item?;
        let record = LogRecord::decode(&payload).map_err(|e| RuntimeError::CorruptRecord {
            index: count,
            key,
            reason: e.to_string(),
        })?;
        if record.instance() != key {
            return Err(RuntimeError::CorruptRecord {
                index: count,
                key,
                reason: format!("record is keyed by {:?}", record.instance()),
            });
        }
        if let LogRecord::Snapshot { at, .. } = &record {
            snapshot_at = Some(*at);
        }
        recovery.add(&record);
        count += 1;
    }
    // The log re-indexes records below the last snapshot that live in segments a
    // crash kept from being removed; finish that compaction now.
    let removed = match snapshot_at {
        Some(at) => log.remove_segments_below(at)?,
        None => 0,
    };
    info!(
        ?dir,
        segments = report.segments,
        records = count,
        torn_tail_bytes_cut = report.torn_tail_bytes_cut,
        snapshot_at,
        removed_segments = removed,
        promised = %recovery.promised(),
        "recovered log"
    );
    Ok((log, recovery))
}

/// Reads chosen values back from the log for the core.
pub(crate) struct LogEntries(pub(crate) LogReader);

impl EntryReader for LogEntries {
    fn read(&self, instance: InstanceId) -> Result<Option<Value>, String> {
        let Some(payload) = self.0.read(instance).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let record = LogRecord::decode(&payload)
            .map_err(|e| format!("record for instance {instance} does not decode: {e}"))?;
        if record.instance() != Some(instance) {
            return Err(format!(
                "record read for instance {instance} is keyed by {:?}",
                record.instance()
            ));
        }
        record
            .into_value()
            .map(Some)
            .ok_or_else(|| format!("record for instance {instance} holds no value"))
    }
}
