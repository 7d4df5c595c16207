//! Cutting an event stream into transactions (MariaDB "event groups").
//!
//! # Rules
//!
//! Feed every event of a stream (a binlog dump, a binlog file) in order to
//! [`TransactionAssembler::push`]. It follows MariaDB 10.11's own grammar
//! (`rpl_parallel.cc`: `is_group_ending`, `Log_event::is_part_of_group`,
//! `Log_event::is_group_event`):
//!
//! * A group starts with a GTID event. Every event that belongs to a group
//!   (QUERY, TABLE_MAP, row events, ANNOTATE_ROWS, INTVAR, RAND, USER_VAR,
//!   XID, XA_PREPARE, unknown types, ...) must come inside one.
//! * A normal group (GTID without `FL_STANDALONE`) ends, inclusive, at
//!   - an XID event ([`GroupEnd::Xid`]: InnoDB commit),
//!   - a QUERY whose text is exactly `COMMIT` ([`GroupEnd::Commit`]:
//!     non-transactional changes, e.g. MyISAM) or exactly `ROLLBACK`
//!     ([`GroupEnd::Rollback`]); `ROLLBACK TO ...` and `SAVEPOINT ...` do
//!     not end a group,
//!   - an XA_PREPARE event ([`GroupEnd::XaPrepare`]: the `XA PREPARE` group,
//!     GTID flag `FL_PREPARED_XA`; it holds the XA transaction's changes and
//!     an `XA END` query),
//!   - a QUERY starting with `XA COMMIT` / `XA ROLLBACK`
//!     ([`GroupEnd::XaCommit`], [`GroupEnd::XaRollback`]).
//! * A standalone group (`FL_STANDALONE`: DDL, and MariaDB's `XA COMMIT` /
//!   `XA ROLLBACK` of a prepared XA transaction, flagged `FL_COMPLETED_XA`)
//!   is the GTID, any INTVAR / RAND / USER_VAR / TABLE_MAP / ANNOTATE_ROWS
//!   events, and the one statement event after them, inclusive
//!   ([`GroupEnd::Statement`], or [`GroupEnd::XaCommit`] /
//!   [`GroupEnd::XaRollback`] when that statement is an XA completion). A
//!   row event ends a standalone group only if it carries `STMT_END_F`
//!   (MariaDB ends at the first row event; it never writes row events in a
//!   standalone group, so both agree on real binlogs).
//! * Events outside groups are returned as they are
//!   ([`Assembled::Other`]): FORMAT_DESCRIPTION, ROTATE, GTID_LIST,
//!   BINLOG_CHECKPOINT, HEARTBEAT, STOP, START_ENCRYPTION, INCIDENT,
//!   START_V3, and any event flagged `LOG_EVENT_IGNORABLE_F`. A
//!   FORMAT_DESCRIPTION sets the checksum of the events after it (and must
//!   describe MariaDB 10.11's layouts); a ROTATE (real or artificial) sets
//!   the current binlog file name reported with each transaction.
//! * Inside a group, a HEARTBEAT is returned as [`Assembled::Other`] and the
//!   group goes on; any other non-group event, or a second GTID, is an
//!   error (the group was never completed: a master restart or a cut
//!   stream).
//!
//! On any error the partial group is dropped (no transaction is ever half
//! delivered) and the event that caused it is not consumed; the caller
//! reconnects from its last complete GTID (or pushes the event again to
//! carry on after the dropped group).
//!
//! # XA
//!
//! MariaDB 10.11 binlogs an XA transaction as two groups: at `XA PREPARE`,
//! a group with the transaction's changes (GTID `FL_PREPARED_XA` with the
//! XID, ..., QUERY `XA END ...`, XA_PREPARE event), and at `XA COMMIT` /
//! `XA ROLLBACK`, a standalone group (GTID `FL_COMPLETED_XA`, QUERY `XA
//! COMMIT X'..',X'..',n`). Each is a [`Transaction`] with its own GTID;
//! both are relayed as they are. `XA COMMIT ... ONE PHASE` is binlogged as
//! a normal group ending with XID. The assembler does not pair prepares
//! with their completions.

use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::event::{Event, EventBuf, EventParts, EventReader, Restamper};
use crate::flags::LOG_EVENT_IGNORABLE_F;
use crate::gtid::Gtid;
use crate::rows_flags::STMT_END_F;
use crate::types::EventType;
use crate::{GtidEvent, body};

/// What ended an event group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupEnd {
    /// An XID event (transactional commit).
    Xid,
    /// QUERY `COMMIT`.
    Commit,
    /// QUERY `ROLLBACK`.
    Rollback,
    /// An XA_PREPARE event (end of an `XA PREPARE` group).
    XaPrepare,
    /// QUERY `XA COMMIT ...`.
    XaCommit,
    /// QUERY `XA ROLLBACK ...`.
    XaRollback,
    /// The statement of a standalone group.
    Statement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventMeta {
    start: usize,
    len: usize,
    parts: EventParts,
}

/// A complete event group: its GTID and its raw events, back to back,
/// exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    gtid: GtidEvent,
    end: GroupEnd,
    bytes: Vec<u8>,
    events: Vec<EventMeta>,
    binlog_file: String,
}

impl Transaction {
    /// The GTID.
    pub fn gtid(&self) -> Gtid {
        self.gtid.gtid()
    }

    /// The parsed GTID event (flags, commit id, XA id).
    pub fn gtid_event(&self) -> &GtidEvent {
        &self.gtid
    }

    /// What ended the group.
    pub fn end(&self) -> GroupEnd {
        self.end
    }

    /// True for a standalone group (`FL_STANDALONE`).
    pub fn is_standalone(&self) -> bool {
        self.gtid.is_standalone()
    }

    /// All events, back to back, as received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All events, back to back, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Total size in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Number of events (GTID event included).
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// The events in order.
    pub fn events(&self) -> impl Iterator<Item = Event<'_>> + '_ {
        self.events.iter().filter_map(|m| {
            let end = m.start.checked_add(m.len)?;
            let raw = self.bytes.get(m.start..end)?;
            Some(Event::reuse(raw, m.parts))
        })
    }

    /// Header log_pos of the last event: the group's end position in the
    /// master's binlog file (what a semi-sync ACK names, with
    /// [`Transaction::binlog_file`]).
    pub fn end_log_pos(&self) -> u32 {
        self.events().last().map_or(0, |e| e.log_pos())
    }

    /// Where the group starts in the master's file (GTID event log_pos
    /// minus its size), if the GTID event carries a position.
    pub fn start_log_pos(&self) -> Option<u32> {
        let first = self.events().next()?;
        match first.log_pos() {
            0 => None,
            p => p.checked_sub(first.header().event_size),
        }
    }

    /// The master's binlog file the group was read from (from the last
    /// ROTATE the assembler saw; empty if none).
    pub fn binlog_file(&self) -> &str {
        &self.binlog_file
    }

    /// The checksum setting the events carry.
    pub fn checksum(&self) -> Checksum {
        self.events()
            .next()
            .map_or(Checksum::None, |e| e.checksum())
    }

    /// Rebuilds a transaction from [`Transaction::bytes`] (e.g. read back
    /// from storage): the bytes must hold exactly one complete group.
    /// [`Transaction::binlog_file`] is empty.
    pub fn from_bytes(bytes: &[u8], checksum: Checksum) -> Result<Self> {
        let mut asm = TransactionAssembler::new(checksum);
        let mut found = None;
        for ev in EventReader::new(bytes, checksum) {
            let ev = ev?;
            if found.is_some() {
                return Err(Error::UnexpectedEvent {
                    event_type: ev.event_type(),
                    context: "after the end of the stored transaction".into(),
                });
            }
            match asm.push(ev.raw())? {
                Some(Assembled::Transaction(t)) => found = Some(t),
                Some(Assembled::Other(e)) => {
                    return Err(Error::UnexpectedEvent {
                        event_type: e.event_type(),
                        context: "in a stored transaction".into(),
                    });
                }
                None => {}
            }
        }
        found.ok_or(Error::Malformed {
            what: "stored transaction",
            reason: "no complete event group",
        })
    }

    /// Appends the events to `out`, re-stamped as the next events of
    /// `restamper`'s continuous file; returns the new end position. On
    /// error `out` and the restamper's position are unchanged.
    pub fn restamp_into(&self, restamper: &mut Restamper, out: &mut Vec<u8>) -> Result<u32> {
        let start = out.len();
        let saved = restamper.clone();
        let mut end = 0;
        for ev in self.events() {
            match restamper.append(ev.raw(), out) {
                Ok(p) => end = p,
                Err(e) => {
                    out.truncate(start);
                    *restamper = saved;
                    return Err(e);
                }
            }
        }
        Ok(end)
    }
}

/// One result of [`TransactionAssembler::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// A complete event group.
    Transaction(Transaction),
    /// An event outside any group (FORMAT_DESCRIPTION, ROTATE, GTID_LIST,
    /// BINLOG_CHECKPOINT, HEARTBEAT, STOP, ...).
    Other(EventBuf),
}

#[derive(Debug)]
struct Pending {
    gtid: GtidEvent,
    bytes: Vec<u8>,
    events: Vec<EventMeta>,
}

/// Feeds on events in stream order and yields complete transactions; see
/// the module documentation for the rules.
#[derive(Debug)]
pub struct TransactionAssembler {
    checksum: Checksum,
    binlog_file: String,
    pending: Option<Pending>,
    max_size: usize,
}

impl TransactionAssembler {
    /// An assembler for a stream whose events carry `checksum` (until a
    /// FORMAT_DESCRIPTION says otherwise). For a replication dump this is
    /// the agreed `@master_binlog_checksum`: it applies to the artificial
    /// ROTATE that precedes the first FORMAT_DESCRIPTION.
    pub fn new(checksum: Checksum) -> Self {
        TransactionAssembler {
            checksum,
            binlog_file: String::new(),
            pending: None,
            max_size: usize::MAX,
        }
    }

    /// Fail a group that grows past `bytes` (default: no limit).
    pub fn with_max_transaction_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// The checksum the next event must carry.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// The current binlog file name (from the last ROTATE).
    pub fn binlog_file(&self) -> &str {
        &self.binlog_file
    }

    /// Sets the current binlog file name (when the stream does not start
    /// with a ROTATE, e.g. reading a file).
    pub fn set_binlog_file(&mut self, name: &str) {
        name.clone_into(&mut self.binlog_file);
    }

    /// The GTID of the group being assembled.
    pub fn pending_gtid(&self) -> Option<Gtid> {
        self.pending.as_ref().map(|p| p.gtid.gtid())
    }

    /// Bytes of the group being assembled.
    pub fn pending_size(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.bytes.len())
    }

    /// Drops the group being assembled (e.g. after a reconnect); returns
    /// its GTID.
    pub fn reset(&mut self) -> Option<Gtid> {
        self.pending.take().map(|p| p.gtid.gtid())
    }

    /// Takes the next event of the stream (exactly one event's bytes, as in
    /// a replication packet after its `0x00` / semi-sync prefix). Returns a
    /// transaction when this event completes one, an event outside groups
    /// as is, or `None` when the event went into the pending group.
    pub fn push(&mut self, raw: &[u8]) -> Result<Option<Assembled>> {
        let r = self.push_inner(raw);
        if r.is_err() {
            self.pending = None;
        }
        r
    }

    fn observe(&mut self, ev: &Event<'_>) -> Result<()> {
        match ev.event_type() {
            EventType::FORMAT_DESCRIPTION => {
                ev.format_description()?.check_supported()?;
                self.checksum = ev.checksum();
            }
            EventType::ROTATE => {
                let r = ev.rotate()?;
                r.file_name.clone_into(&mut self.binlog_file);
            }
            _ => {}
        }
        Ok(())
    }

    fn push_inner(&mut self, raw: &[u8]) -> Result<Option<Assembled>> {
        let ev = Event::parse(raw, self.checksum)?;
        let t = ev.event_type();
        let outside_groups = !t.is_group_event() || ev.flags() & LOG_EVENT_IGNORABLE_F != 0;

        let Some(pending) = self.pending.as_mut() else {
            if t == EventType::GTID {
                let gtid = ev.gtid()?;
                if raw.len() > self.max_size {
                    return Err(Error::TooLarge("transaction over the assembler's limit"));
                }
                let mut p = Pending {
                    gtid,
                    bytes: Vec::with_capacity(raw.len().max(4096).min(self.max_size)),
                    events: Vec::with_capacity(8),
                };
                append(&mut p, &ev);
                self.pending = Some(p);
                return Ok(None);
            }
            if outside_groups {
                self.observe(&ev)?;
                return Ok(Some(Assembled::Other(ev.to_owned_event())));
            }
            return Err(Error::UnexpectedEvent {
                event_type: t,
                context: "outside an event group (a group must start with a GTID event)".into(),
            });
        };

        if t == EventType::HEARTBEAT {
            return Ok(Some(Assembled::Other(ev.to_owned_event())));
        }
        if t == EventType::GTID || (outside_groups && ev.flags() & LOG_EVENT_IGNORABLE_F == 0) {
            return Err(Error::UnexpectedEvent {
                event_type: t,
                context: format!(
                    "inside event group {} (the incomplete group was dropped)",
                    pending.gtid.gtid()
                ),
            });
        }
        if pending.bytes.len().saturating_add(raw.len()) > self.max_size {
            return Err(Error::TooLarge("transaction over the assembler's limit"));
        }
        let end = if pending.gtid.is_standalone() {
            standalone_end(&ev)?
        } else {
            group_end(&ev)?
        };
        append(pending, &ev);
        match end {
            None => Ok(None),
            Some(end) => {
                let Some(p) = self.pending.take() else {
                    return Ok(None);
                };
                Ok(Some(Assembled::Transaction(Transaction {
                    gtid: p.gtid,
                    end,
                    bytes: p.bytes,
                    events: p.events,
                    binlog_file: self.binlog_file.clone(),
                })))
            }
        }
    }
}

fn append(p: &mut Pending, ev: &Event<'_>) {
    p.events.push(EventMeta {
        start: p.bytes.len(),
        len: ev.len(),
        parts: ev.parts(),
    });
    p.bytes.extend_from_slice(ev.raw());
}

fn query_end(q: &body::QueryEvent<'_>) -> Option<GroupEnd> {
    if q.is_commit() {
        Some(GroupEnd::Commit)
    } else if q.is_rollback() {
        Some(GroupEnd::Rollback)
    } else if q.is_xa_commit() {
        Some(GroupEnd::XaCommit)
    } else if q.is_xa_rollback() {
        Some(GroupEnd::XaRollback)
    } else {
        None
    }
}

/// Does `ev` end a normal (non-standalone) group?
fn group_end(ev: &Event<'_>) -> Result<Option<GroupEnd>> {
    Ok(match ev.event_type() {
        EventType::XID => Some(GroupEnd::Xid),
        EventType::XA_PREPARE => Some(GroupEnd::XaPrepare),
        EventType::QUERY => query_end(&ev.query()?),
        _ => None,
    })
}

/// Does `ev` end a standalone group?
fn standalone_end(ev: &Event<'_>) -> Result<Option<GroupEnd>> {
    let t = ev.event_type();
    if t.is_statement_prefix() {
        return Ok(None);
    }
    if t.is_rows() {
        let last = ev.rows_flags()? & STMT_END_F != 0;
        return Ok(last.then_some(GroupEnd::Statement));
    }
    Ok(Some(match t {
        EventType::QUERY => match query_end(&ev.query()?) {
            Some(GroupEnd::XaCommit) => GroupEnd::XaCommit,
            Some(GroupEnd::XaRollback) => GroupEnd::XaRollback,
            _ => GroupEnd::Statement,
        },
        EventType::XID => GroupEnd::Xid,
        EventType::XA_PREPARE => GroupEnd::XaPrepare,
        _ => GroupEnd::Statement,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{self, EventSpec, build_event};
    use crate::flags::LOG_EVENT_IGNORABLE_F;
    use crate::{QueryEvent, Restamper};

    const CS: Checksum = Checksum::Crc32;

    /// A little synthetic stream writer: log_pos follows the bytes written.
    struct W {
        pos: u32,
    }

    impl W {
        fn new() -> Self {
            W { pos: 4 }
        }

        fn ev(&mut self, t: EventType, body: &[u8], flags: u16) -> Vec<u8> {
            let len = (19 + body.len() + 4) as u32;
            self.pos += len;
            build_event(
                &EventSpec {
                    timestamp: 1,
                    event_type: t,
                    server_id: 1,
                    log_pos: self.pos,
                    flags,
                },
                body,
                CS,
            )
            .unwrap()
        }

        fn gtid(&mut self, seq: u64, flags2: u8) -> Vec<u8> {
            let body = GtidEvent::new(Gtid::new(0, 1, seq), flags2)
                .encode_body()
                .unwrap();
            self.ev(EventType::GTID, &body, 0)
        }

        fn query(&mut self, text: &[u8]) -> Vec<u8> {
            let body = QueryEvent {
                thread_id: 1,
                exec_time: 0,
                error_code: 0,
                status_vars: &[],
                db: b"d",
                query: text,
            }
            .encode_body()
            .unwrap();
            self.ev(EventType::QUERY, &body, 0)
        }

        fn xid(&mut self) -> Vec<u8> {
            self.ev(EventType::XID, &7u64.to_le_bytes(), 0)
        }

        fn rows(&mut self, t: EventType, stmt_end: bool) -> Vec<u8> {
            let mut body = vec![1, 0, 0, 0, 0, 0];
            body.extend_from_slice(&u16::from(stmt_end).to_le_bytes());
            body.extend_from_slice(&[1, 2, 3, 4]);
            self.ev(t, &body, 0)
        }

        fn table_map(&mut self) -> Vec<u8> {
            self.ev(EventType::TABLE_MAP, &[1, 0, 0, 0, 0, 0, 1, 0, 9, 9], 0)
        }
    }

    fn feed(asm: &mut TransactionAssembler, evs: &[Vec<u8>]) -> Vec<Assembled> {
        let mut out = Vec::new();
        for e in evs {
            if let Some(a) = asm.push(e).unwrap() {
                out.push(a);
            }
        }
        out
    }

    fn trx(a: &Assembled) -> &Transaction {
        match a {
            Assembled::Transaction(t) => t,
            Assembled::Other(e) => panic!("expected a transaction, got {}", e.event_type()),
        }
    }

    #[test]
    fn xid_group() {
        let mut w = W::new();
        let evs = [
            w.gtid(1, GtidEvent::FL_TRANSACTIONAL),
            w.ev(EventType::ANNOTATE_ROWS, b"INSERT ...", 0),
            w.table_map(),
            w.rows(EventType::WRITE_ROWS_V1, true),
            w.xid(),
        ];
        let mut asm = TransactionAssembler::new(CS);
        for e in &evs[..4] {
            assert!(asm.push(e).unwrap().is_none());
        }
        assert_eq!(asm.pending_gtid(), Some(Gtid::new(0, 1, 1)));
        assert!(asm.pending_size() > 0);
        let t = match asm.push(&evs[4]).unwrap() {
            Some(Assembled::Transaction(t)) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(asm.pending_gtid(), None);
        assert_eq!(t.gtid(), Gtid::new(0, 1, 1));
        assert_eq!(t.end(), GroupEnd::Xid);
        assert!(!t.is_standalone());
        assert_eq!(t.event_count(), 5);
        assert_eq!(t.bytes(), evs.concat());
        assert_eq!(t.size(), evs.concat().len());
        assert_eq!(t.end_log_pos(), w.pos);
        assert_eq!(t.start_log_pos(), Some(4));
        assert_eq!(t.checksum(), CS);
        let types: Vec<EventType> = t.events().map(|e| e.event_type()).collect();
        assert_eq!(
            types,
            [
                EventType::GTID,
                EventType::ANNOTATE_ROWS,
                EventType::TABLE_MAP,
                EventType::WRITE_ROWS_V1,
                EventType::XID
            ]
        );
        let back = Transaction::from_bytes(t.bytes(), CS).unwrap();
        assert_eq!(back.gtid(), t.gtid());
        assert_eq!(back.bytes(), t.bytes());
        assert_eq!(back.end(), GroupEnd::Xid);
    }

    #[test]
    fn query_terminators() {
        let mut w = W::new();
        let mut asm = TransactionAssembler::new(CS);
        let cases: [(&[u8], GroupEnd); 4] = [
            (b"COMMIT", GroupEnd::Commit),
            (b"ROLLBACK", GroupEnd::Rollback),
            (b"XA COMMIT X'61',X'',1", GroupEnd::XaCommit),
            (b"XA ROLLBACK X'61',X'',1", GroupEnd::XaRollback),
        ];
        for (i, (text, end)) in cases.iter().enumerate() {
            let evs = vec![
                w.gtid(i as u64 + 1, 0),
                w.query(b"BEGIN"),
                w.query(b"SAVEPOINT `a`"),
                w.query(b"ROLLBACK TO `a`"),
                w.query(b"commit"),
                w.query(text),
            ];
            let out = feed(&mut asm, &evs);
            assert_eq!(out.len(), 1);
            let t = trx(&out[0]);
            assert_eq!(t.end(), *end);
            assert_eq!(t.event_count(), 6);
        }
    }

    #[test]
    fn xa_prepare_group() {
        let mut w = W::new();
        let mut g = GtidEvent::new(Gtid::new(0, 1, 9), GtidEvent::FL_TRANSACTIONAL);
        g.flags2 |= GtidEvent::FL_PREPARED_XA;
        g.xid = Some(crate::XaXid {
            format_id: 1,
            gtrid: b"x".to_vec(),
            bqual: vec![],
        });
        let gtid = w.ev(EventType::GTID, &g.encode_body().unwrap(), 0);
        let evs = vec![
            gtid,
            w.table_map(),
            w.rows(EventType::WRITE_ROWS_V1, true),
            w.query(b"XA END X'78',X'',1"),
            w.ev(
                EventType::XA_PREPARE,
                &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'x'],
                0,
            ),
        ];
        let out = feed(&mut TransactionAssembler::new(CS), &evs);
        assert_eq!(out.len(), 1);
        let t = trx(&out[0]);
        assert_eq!(t.end(), GroupEnd::XaPrepare);
        assert!(t.gtid_event().is_xa_prepare());
    }

    #[test]
    fn standalone_groups() {
        let mut w = W::new();
        let mut asm = TransactionAssembler::new(CS);
        // DDL with an INTVAR and a USER_VAR before it.
        let evs = vec![
            w.gtid(1, GtidEvent::FL_STANDALONE | GtidEvent::FL_DDL),
            w.ev(EventType::INTVAR, &[2, 5, 0, 0, 0, 0, 0, 0, 0], 0),
            w.ev(EventType::USER_VAR, &[1, 0, 0, 0, b'a', 1], 0),
            w.query(b"CREATE TABLE t (a INT)"),
        ];
        let out = feed(&mut asm, &evs);
        assert_eq!(out.len(), 1);
        let t = trx(&out[0]);
        assert_eq!(t.end(), GroupEnd::Statement);
        assert!(t.is_standalone());
        assert_eq!(t.event_count(), 4);

        // XA COMMIT as a standalone group.
        let evs = vec![
            w.gtid(2, GtidEvent::FL_STANDALONE),
            w.query(b"XA COMMIT X'78',X'',1"),
        ];
        let out = feed(&mut asm, &evs);
        assert_eq!(trx(&out[0]).end(), GroupEnd::XaCommit);

        // A standalone statement in row events: ends at STMT_END_F.
        let evs = vec![
            w.gtid(3, GtidEvent::FL_STANDALONE),
            w.table_map(),
            w.rows(EventType::WRITE_ROWS_V1, false),
            w.rows(EventType::WRITE_ROWS_V1, true),
        ];
        let out = feed(&mut asm, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(trx(&out[0]).event_count(), 4);
    }

    #[test]
    fn control_events_pass_through_and_set_state() {
        let mut asm = TransactionAssembler::new(CS);
        let rot = build::artificial_rotate(1, 4, "m-bin.000007", CS).unwrap();
        match asm.push(&rot).unwrap() {
            Some(Assembled::Other(e)) => assert_eq!(e.event_type(), EventType::ROTATE),
            other => panic!("{other:?}"),
        }
        assert_eq!(asm.binlog_file(), "m-bin.000007");
        // An FDE with checksum NONE switches the stream's checksum.
        let fde = build::format_description(&build::FormatDescriptionSpec {
            server_version: "10.11.19-MariaDB",
            timestamp: 0,
            create_timestamp: 0,
            server_id: 1,
            log_pos: 0,
            flags: 0,
            checksum: Checksum::None,
        })
        .unwrap();
        assert!(matches!(asm.push(&fde).unwrap(), Some(Assembled::Other(_))));
        assert_eq!(asm.checksum(), Checksum::None);
        let hb = build::heartbeat(1, 4, "m-bin.000007", Checksum::None).unwrap();
        assert!(matches!(asm.push(&hb).unwrap(), Some(Assembled::Other(_))));
        let g = build::gtid_event(
            &EventSpec {
                timestamp: 0,
                event_type: EventType::GTID,
                server_id: 1,
                log_pos: 0,
                flags: 0,
            },
            &GtidEvent::new(Gtid::new(0, 1, 1), 0),
            Checksum::None,
        )
        .unwrap();
        assert!(asm.push(&g).unwrap().is_none());
        let q = build::query_event(
            &EventSpec {
                timestamp: 0,
                event_type: EventType::QUERY,
                server_id: 1,
                log_pos: 0,
                flags: 0,
            },
            &QueryEvent {
                thread_id: 0,
                exec_time: 0,
                error_code: 0,
                status_vars: &[],
                db: b"",
                query: b"COMMIT",
            },
            Checksum::None,
        )
        .unwrap();
        let t = match asm.push(&q).unwrap() {
            Some(Assembled::Transaction(t)) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(t.binlog_file(), "m-bin.000007");
        assert_eq!(t.checksum(), Checksum::None);
        assert_eq!(t.start_log_pos(), None);
        asm.set_binlog_file("other");
        assert_eq!(asm.binlog_file(), "other");
    }

    #[test]
    fn heartbeat_inside_a_group_is_passed_on() {
        let mut w = W::new();
        let mut asm = TransactionAssembler::new(CS);
        assert!(asm.push(&w.gtid(1, 0)).unwrap().is_none());
        let hb = build::heartbeat(1, 100, "f", CS).unwrap();
        assert!(matches!(asm.push(&hb).unwrap(), Some(Assembled::Other(_))));
        let out = feed(&mut asm, &[w.query(b"COMMIT")]);
        assert_eq!(trx(&out[0]).event_count(), 2);
    }

    #[test]
    fn grammar_errors_drop_the_partial_group() {
        let mut w = W::new();
        let mut asm = TransactionAssembler::new(CS);
        // A row event outside any group.
        let rows = w.rows(EventType::WRITE_ROWS_V1, true);
        assert!(matches!(
            asm.push(&rows),
            Err(Error::UnexpectedEvent { .. })
        ));
        // A second GTID inside a group.
        asm.push(&w.gtid(1, 0)).unwrap();
        let g2 = w.gtid(2, 0);
        assert!(matches!(asm.push(&g2), Err(Error::UnexpectedEvent { .. })));
        assert_eq!(asm.pending_gtid(), None);
        // The caller may push the GTID again to carry on.
        assert!(asm.push(&g2).unwrap().is_none());
        // A ROTATE inside a group.
        let rot = build::artificial_rotate(1, 4, "x", CS).unwrap();
        assert!(asm.push(&rot).is_err());
        assert_eq!(asm.pending_gtid(), None);
        // A damaged event inside a group.
        asm.push(&w.gtid(3, 0)).unwrap();
        let mut bad = w.xid();
        bad[20] ^= 1;
        assert!(matches!(
            asm.push(&bad),
            Err(Error::ChecksumMismatch { .. })
        ));
        assert_eq!(asm.pending_gtid(), None);
        // reset() drops a pending group.
        asm.push(&w.gtid(4, 0)).unwrap();
        assert_eq!(asm.reset(), Some(Gtid::new(0, 1, 4)));
        assert_eq!(asm.reset(), None);
        // Ignorable unknown events are fine outside groups and inside them.
        let ign = w.ev(EventType(200), b"?", LOG_EVENT_IGNORABLE_F);
        assert!(matches!(asm.push(&ign).unwrap(), Some(Assembled::Other(_))));
        let evs = vec![w.gtid(5, 0), ign.clone(), w.xid()];
        let out = feed(&mut asm, &evs);
        assert_eq!(trx(&out[0]).event_count(), 3);
        // Unknown, non-ignorable types belong to groups.
        let unk = w.ev(EventType(200), b"?", 0);
        assert!(asm.push(&unk).is_err());
    }

    #[test]
    fn size_limit() {
        let mut w = W::new();
        let mut asm = TransactionAssembler::new(CS).with_max_transaction_size(100);
        asm.push(&w.gtid(1, 0)).unwrap();
        asm.push(&w.query(b"BEGIN")).unwrap();
        assert!(matches!(
            asm.push(&w.query(&[b'x'; 60])),
            Err(Error::TooLarge(_))
        ));
        assert_eq!(asm.pending_gtid(), None);
        let mut tiny = TransactionAssembler::new(CS).with_max_transaction_size(10);
        assert!(tiny.push(&w.gtid(2, 0)).is_err());
    }

    #[test]
    fn from_bytes_rejects_partial_or_extra() {
        let mut w = W::new();
        let evs = [w.gtid(1, 0), w.xid()];
        let whole = evs.concat();
        assert!(Transaction::from_bytes(&whole, CS).is_ok());
        assert!(Transaction::from_bytes(&evs[0], CS).is_err());
        assert!(Transaction::from_bytes(&[], CS).is_err());
        let mut extra = whole.clone();
        extra.extend_from_slice(&w.xid());
        assert!(Transaction::from_bytes(&extra, CS).is_err());
        let mut two = whole.clone();
        two.extend_from_slice(&[w.gtid(2, 0), w.xid()].concat());
        assert!(Transaction::from_bytes(&two, CS).is_err());
        let hb = build::heartbeat(1, 4, "f", CS).unwrap();
        assert!(Transaction::from_bytes(&hb, CS).is_err());
        assert!(Transaction::from_bytes(&whole[..whole.len() - 1], CS).is_err());
    }

    #[test]
    fn restamp_into_a_virtual_file() {
        let mut w = W::new();
        w.pos = 90_000; // positions of some other master's file
        let evs = [w.gtid(1, 0), w.query(b"BEGIN"), w.xid()];
        let t = Transaction::from_bytes(&evs.concat(), CS).unwrap();
        let mut r = Restamper::new(256, CS);
        let mut out = vec![0xaa];
        let end = t.restamp_into(&mut r, &mut out).unwrap();
        assert_eq!(end as usize, 256 + t.size());
        assert_eq!(out.len(), 1 + t.size());
        let again = Transaction::from_bytes(&out[1..], CS).unwrap();
        assert_eq!(again.gtid(), t.gtid());
        assert_eq!(again.end_log_pos(), end);
        assert_eq!(again.start_log_pos(), Some(256));
        let bodies: Vec<&[u8]> = t.events().map(|e| e.body()).collect();
        let bodies2: Vec<&[u8]> = again.events().map(|e| e.body()).collect();
        assert_eq!(bodies, bodies2);
        // Past 4 GiB: error, nothing written, position kept.
        let mut near = Restamper::new(u32::MAX - 50, CS);
        let mut out = Vec::new();
        assert!(t.restamp_into(&mut near, &mut out).is_err());
        assert!(out.is_empty());
        assert_eq!(near.position(), u64::from(u32::MAX - 50));
    }
}
