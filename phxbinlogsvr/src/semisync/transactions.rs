//! Whole transactions on top of the event stream.

use binlog::{Assembled, GtidPos, Transaction, TransactionAssembler};

use super::client::{BinlogPosition, EventStream, ReplEvent};
use super::error::Result;

/// A complete transaction read from the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplTransaction {
    /// The event group, bytes as received.
    pub transaction: Transaction,
    /// Where it ends in the master's binlog: the position to ACK once it
    /// is chosen.
    pub end: BinlogPosition,
    /// True if the master waits for an ACK at `end` (a commit is blocked
    /// on it). An ACK at `end` is harmless when false.
    pub ack_requested: bool,
}

/// One item of [`TransactionReader::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplItem {
    /// A complete transaction.
    Transaction(ReplTransaction),
    /// An event outside transactions (FORMAT_DESCRIPTION, ROTATE,
    /// GTID_LIST, BINLOG_CHECKPOINT, HEARTBEAT, ...).
    Other(ReplEvent),
}

/// Feeds [`EventStream`] events to a [`TransactionAssembler`] and yields
/// whole transactions, with the position to acknowledge.
#[derive(Debug)]
pub struct TransactionReader {
    events: EventStream,
    assembler: TransactionAssembler,
    gtid_pos: GtidPos,
}

impl TransactionReader {
    /// Reads from `events`. `start` is the connect state the stream was
    /// opened with; [`TransactionReader::gtid_pos`] advances from it.
    pub fn new(events: EventStream, start: GtidPos) -> Self {
        let assembler = TransactionAssembler::new(events.checksum());
        TransactionReader {
            events,
            assembler,
            gtid_pos: start,
        }
    }

    /// The next transaction or non-transaction event. On an error (also a
    /// malformed group) the stream is done: reconnect from
    /// [`TransactionReader::gtid_pos`].
    pub async fn next(&mut self) -> Result<ReplItem> {
        loop {
            let ev = self.events.next_event().await?;
            match self.assembler.push(ev.bytes())? {
                None => {}
                Some(Assembled::Other(_)) => return Ok(ReplItem::Other(ev)),
                Some(Assembled::Transaction(t)) => {
                    self.gtid_pos.set(t.gtid());
                    return Ok(ReplItem::Transaction(ReplTransaction {
                        transaction: t,
                        end: ev.position(),
                        ack_requested: ev.ack_requested(),
                    }));
                }
            }
        }
    }

    /// The next transaction, skipping other events. (MariaDB requests ACKs
    /// only at transaction ends, so nothing skipped waits for one.)
    pub async fn next_transaction(&mut self) -> Result<ReplTransaction> {
        loop {
            if let ReplItem::Transaction(t) = self.next().await? {
                return Ok(t);
            }
        }
    }

    /// The connect state advanced by every transaction returned: where to
    /// reconnect to get only newer ones.
    pub fn gtid_pos(&self) -> &GtidPos {
        &self.gtid_pos
    }

    /// The underlying stream.
    pub fn events(&self) -> &EventStream {
        &self.events
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> EventStream {
        self.events
    }
}
