//! Events as checked views over raw bytes; reading a stream or a file;
//! re-stamping.

use crate::body::{
    BinlogCheckpointEvent, FormatDescriptionEvent, GtidEvent, GtidListEvent, HeartbeatEvent,
    QueryEvent, RotateEvent, XaPrepareEvent, XidEvent,
};
use crate::checksum::{CRC_LEN, Checksum, crc32};
use crate::cursor::{Cursor, put_at, u32_at};
use crate::error::{Error, Result};
use crate::header::{EventHeader, FLAGS_OFFSET, HEADER_LEN, LOG_POS_OFFSET};
use crate::types::{EventType, flags};

/// The 4 bytes every binlog file starts with.
pub const BINLOG_MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];

/// Where an event's body ends and how its trailer is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// End of the body = start of the 4-byte checksum slot, if any.
    body_end: usize,
    /// The event's checksum algorithm (for FORMAT_DESCRIPTION: its own).
    checksum: Checksum,
    /// Whether the slot must hold a valid CRC.
    verify: bool,
}

/// Works out where the body ends and which checksum applies.
///
/// A FORMAT_DESCRIPTION event always ends with its algorithm byte and a
/// 4-byte checksum slot. The slot must verify when the algorithm is CRC32;
/// with algorithm NONE it must verify too when the stream is read as CRC32
/// (a checksum-aware server always fills the slot; only a master serving a
/// NONE stream leaves it stale after editing the header), so a damaged
/// algorithm byte cannot switch verification off. Every other event has
/// `checksum.trailer_len()` trailing bytes.
fn layout(raw: &[u8], header: &EventHeader, checksum: Checksum) -> Result<Layout> {
    let size = raw.len();
    if header.event_type == EventType::FORMAT_DESCRIPTION {
        // binlog version 2 + server version 50 + created 4 + header len 1
        // + algorithm 1 + checksum slot 4.
        const MIN: usize = HEADER_LEN + 2 + 50 + 4 + 1 + 1 + CRC_LEN;
        if size < MIN {
            return Err(Error::BadEventSize {
                size: header.event_size,
                available: size,
                reason: "too small for a FORMAT_DESCRIPTION event",
            });
        }
        let alg = raw
            .get(size - CRC_LEN - 1)
            .copied()
            .ok_or(Error::Truncated {
                what: "FORMAT_DESCRIPTION checksum algorithm",
                needed: size,
                available: raw.len(),
            })?;
        let own = Checksum::from_alg(alg)?;
        Ok(Layout {
            body_end: size - CRC_LEN,
            checksum: own,
            verify: own == Checksum::Crc32 || checksum == Checksum::Crc32,
        })
    } else {
        if size < HEADER_LEN + checksum.trailer_len() {
            return Err(Error::BadEventSize {
                size: header.event_size,
                available: size,
                reason: "smaller than header plus checksum",
            });
        }
        Ok(Layout {
            body_end: size - checksum.trailer_len(),
            checksum,
            verify: checksum == Checksum::Crc32,
        })
    }
}

/// Reads the header and checks that `event_size` equals `raw.len()`.
fn exact_header(raw: &[u8]) -> Result<EventHeader> {
    let header = EventHeader::parse(raw)?;
    if header.event_size as usize != raw.len() {
        return Err(Error::BadEventSize {
            size: header.event_size,
            available: raw.len(),
            reason: "size field disagrees with the event's length",
        });
    }
    Ok(header)
}

fn verify(raw: &[u8], body_end: usize, event_type: EventType) -> Result<()> {
    let data = raw.get(..body_end).ok_or(Error::Truncated {
        what: "event",
        needed: body_end,
        available: raw.len(),
    })?;
    let stored = u32_at(raw, body_end).ok_or(Error::Truncated {
        what: "event checksum",
        needed: body_end + CRC_LEN,
        available: raw.len(),
    })?;
    let mut computed = crc32(data);
    if stored != computed && event_type == EventType::FORMAT_DESCRIPTION {
        // The FDE of the binlog file MariaDB is still writing carries
        // LOG_EVENT_BINLOG_IN_USE_F, and its CRC was computed with that flag clear
        // (the server sets it in place without re-checksumming).
        computed = crc32_with_in_use_cleared(data);
    }
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            event_type,
            stored,
            computed,
        });
    }
    Ok(())
}

/// CRC-32 of an event's bytes as if the header's in-use flag (the low bit of the
/// flags at offset 17) were clear.
fn crc32_with_in_use_cleared(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    match data.get(FLAGS_OFFSET) {
        Some(flags_low) => {
            h.update(&data[..FLAGS_OFFSET]);
            h.update(&[flags_low & !(flags::LOG_EVENT_BINLOG_IN_USE_F as u8)]);
            h.update(&data[FLAGS_OFFSET + 1..]);
        }
        None => h.update(data),
    }
    h.finalize()
}

/// One event: a checked view over its raw bytes (header, body, checksum).
///
/// Constructing one checks the size field against the buffer and, unless
/// made with [`Event::parse_unverified`], the CRC. Typed accessors
/// ([`Event::gtid`], [`Event::query`], ...) parse the body on demand and
/// return errors, never panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    raw: &'a [u8],
    header: EventHeader,
    layout: Layout,
}

impl<'a> Event<'a> {
    /// Parses `raw`, which must hold exactly one event (as a replication
    /// packet does), and verifies its CRC when `checksum` is CRC32 (for a
    /// FORMAT_DESCRIPTION event: when its own algorithm byte says CRC32).
    pub fn parse(raw: &'a [u8], checksum: Checksum) -> Result<Self> {
        let ev = Self::parse_unverified(raw, checksum)?;
        ev.verify_checksum()?;
        Ok(ev)
    }

    /// Like [`Event::parse`] but without verifying the CRC.
    pub fn parse_unverified(raw: &'a [u8], checksum: Checksum) -> Result<Self> {
        let header = exact_header(raw)?;
        let layout = layout(raw, &header, checksum)?;
        Ok(Event {
            raw,
            header,
            layout,
        })
    }

    /// Parses (and verifies) the first event of `buf`, returning it and the
    /// bytes after it. [`Error::Truncated`] means `buf` ends inside the event.
    pub fn read(buf: &'a [u8], checksum: Checksum) -> Result<(Self, &'a [u8])> {
        let header = EventHeader::parse(buf)?;
        let size = header.event_size as usize;
        if size < HEADER_LEN {
            return Err(Error::BadEventSize {
                size: header.event_size,
                available: buf.len(),
                reason: "smaller than the 19-byte header",
            });
        }
        if buf.len() < size {
            return Err(Error::Truncated {
                what: "event",
                needed: size,
                available: buf.len(),
            });
        }
        let (raw, rest) = buf.split_at(size);
        Ok((Self::parse(raw, checksum)?, rest))
    }

    /// Rebuilds a view over bytes parsed earlier (same bytes, same parts).
    pub(crate) fn reuse(raw: &'a [u8], parts: EventParts) -> Self {
        Event {
            raw,
            header: parts.header,
            layout: parts.layout,
        }
    }

    /// What [`Event::reuse`] needs.
    pub(crate) fn parts(&self) -> EventParts {
        EventParts {
            header: self.header,
            layout: self.layout,
        }
    }

    /// Checks the stored CRC (no-op without a checksum).
    pub fn verify_checksum(&self) -> Result<()> {
        if self.layout.verify {
            verify(self.raw, self.layout.body_end, self.header.event_type)
        } else {
            Ok(())
        }
    }

    /// The whole event: header, body, checksum.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The bytes between header and checksum. For FORMAT_DESCRIPTION this
    /// includes the trailing algorithm byte.
    pub fn body(&self) -> &'a [u8] {
        self.raw
            .get(HEADER_LEN..self.layout.body_end)
            .unwrap_or(&[])
    }

    /// The parsed header.
    pub fn header(&self) -> &EventHeader {
        &self.header
    }

    /// The event type.
    pub fn event_type(&self) -> EventType {
        self.header.event_type
    }

    /// Header log_pos: end of this event in the master's binlog file.
    pub fn log_pos(&self) -> u32 {
        self.header.log_pos
    }

    /// Header server_id.
    pub fn server_id(&self) -> u32 {
        self.header.server_id
    }

    /// Header timestamp.
    pub fn timestamp(&self) -> u32 {
        self.header.timestamp
    }

    /// Header flags.
    pub fn flags(&self) -> u16 {
        self.header.flags
    }

    /// True if `LOG_EVENT_ARTIFICIAL_F` is set.
    pub fn is_artificial(&self) -> bool {
        self.header.is_artificial()
    }

    /// Whole event length in bytes (= header event_size).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Never true for a parsed event (it has at least a header); for
    /// clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The checksum that applies to this event (for FORMAT_DESCRIPTION: its
    /// own algorithm, which also applies to the events after it).
    pub fn checksum(&self) -> Checksum {
        self.layout.checksum
    }

    /// The 4 bytes after the body, if the event has them (every event of a
    /// CRC32 stream; every FORMAT_DESCRIPTION).
    pub fn stored_crc(&self) -> Option<u32> {
        u32_at(self.raw, self.layout.body_end)
    }

    /// An owned copy.
    pub fn to_owned_event(&self) -> EventBuf {
        EventBuf {
            bytes: self.raw.to_vec(),
            parts: self.parts(),
        }
    }

    /// A copy with log_pos (and optionally flags) replaced and the CRC
    /// recomputed; see [`restamp_in_place`].
    pub fn restamped(&self, log_pos: u32, flags: Option<u16>) -> Result<Vec<u8>> {
        let mut v = self.raw.to_vec();
        restamp_with(&mut v, self.header, self.layout, log_pos, flags)?;
        Ok(v)
    }

    fn body_of(&self, expected: EventType) -> Result<&'a [u8]> {
        if self.header.event_type != expected {
            return Err(Error::WrongEventType {
                expected,
                found: self.header.event_type,
            });
        }
        Ok(self.body())
    }

    /// The body of a GTID event.
    pub fn gtid(&self) -> Result<GtidEvent> {
        GtidEvent::parse(self.body_of(EventType::GTID)?, self.header.server_id)
    }

    /// The body of a GTID_LIST event.
    pub fn gtid_list(&self) -> Result<GtidListEvent> {
        GtidListEvent::parse(self.body_of(EventType::GTID_LIST)?)
    }

    /// The body of a ROTATE event.
    pub fn rotate(&self) -> Result<RotateEvent<'a>> {
        RotateEvent::parse(self.body_of(EventType::ROTATE)?)
    }

    /// The body of a FORMAT_DESCRIPTION event.
    pub fn format_description(&self) -> Result<FormatDescriptionEvent<'a>> {
        FormatDescriptionEvent::parse(self.body_of(EventType::FORMAT_DESCRIPTION)?)
    }

    /// The body of an XID event.
    pub fn xid(&self) -> Result<XidEvent> {
        XidEvent::parse(self.body_of(EventType::XID)?)
    }

    /// The body of a QUERY event (not QUERY_COMPRESSED).
    pub fn query(&self) -> Result<QueryEvent<'a>> {
        QueryEvent::parse(self.body_of(EventType::QUERY)?)
    }

    /// The body of a HEARTBEAT event.
    pub fn heartbeat(&self) -> Result<HeartbeatEvent<'a>> {
        HeartbeatEvent::parse(self.body_of(EventType::HEARTBEAT)?, self.header.log_pos)
    }

    /// The body of a BINLOG_CHECKPOINT event.
    pub fn binlog_checkpoint(&self) -> Result<BinlogCheckpointEvent<'a>> {
        BinlogCheckpointEvent::parse(self.body_of(EventType::BINLOG_CHECKPOINT)?)
    }

    /// The body of an XA_PREPARE event.
    pub fn xa_prepare(&self) -> Result<XaPrepareEvent> {
        XaPrepareEvent::parse(self.body_of(EventType::XA_PREPARE)?)
    }

    /// The statement text of an ANNOTATE_ROWS event.
    pub fn annotate_rows(&self) -> Result<&'a [u8]> {
        self.body_of(EventType::ANNOTATE_ROWS)
    }

    /// The flags of a row event (`STMT_END_F` = 1 marks the statement's
    /// last row event). Assumes the 8/10-byte post-header MariaDB 10.11
    /// declares (6-byte table id, then the u16 flags).
    pub fn rows_flags(&self) -> Result<u16> {
        let t = self.header.event_type;
        if !t.is_rows() {
            return Err(Error::WrongEventType {
                expected: EventType::WRITE_ROWS_V1,
                found: t,
            });
        }
        let mut c = Cursor::new(self.body(), "row event post-header");
        c.take(6)?;
        c.u16()
    }
}

/// An owned event (bytes plus the parsed header); see [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBuf {
    bytes: Vec<u8>,
    parts: EventParts,
}

/// The parsed parts of an event, to view the same bytes again without
/// re-parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventParts {
    header: EventHeader,
    layout: Layout,
}

impl EventBuf {
    /// Takes ownership of one event's bytes, checking it like
    /// [`Event::parse`] (size field and CRC).
    pub fn parse(bytes: Vec<u8>, checksum: Checksum) -> Result<Self> {
        let parts = Event::parse(&bytes, checksum)?.parts();
        Ok(EventBuf { bytes, parts })
    }

    /// A view of the event.
    pub fn event(&self) -> Event<'_> {
        Event::reuse(&self.bytes, self.parts)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The raw bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The parsed header.
    pub fn header(&self) -> &EventHeader {
        &self.parts.header
    }

    /// The event type.
    pub fn event_type(&self) -> EventType {
        self.parts.header.event_type
    }
}

impl<'a> From<Event<'a>> for EventBuf {
    fn from(ev: Event<'a>) -> Self {
        ev.to_owned_event()
    }
}

/// Rewrites an event's header log_pos (and flags, if given) in place and
/// recomputes its CRC; the body, and so the GTID, is untouched.
///
/// The stored CRC is verified first, so a damaged event is never given a
/// fresh valid checksum: on any error `raw` is left unchanged. One pass over
/// the body serves both the check and the new CRC. A FORMAT_DESCRIPTION
/// event's checksum slot is always recomputed (it is present even with
/// algorithm NONE).
pub fn restamp_in_place(
    raw: &mut [u8],
    checksum: Checksum,
    log_pos: u32,
    flags: Option<u16>,
) -> Result<()> {
    let header = exact_header(raw)?;
    let layout = layout(raw, &header, checksum)?;
    restamp_with(raw, header, layout, log_pos, flags)
}

fn restamp_with(
    raw: &mut [u8],
    header: EventHeader,
    layout: Layout,
    log_pos: u32,
    flags: Option<u16>,
) -> Result<()> {
    let body_end = layout.body_end;
    let has_slot = body_end < raw.len();
    let body = raw.get(HEADER_LEN..body_end).unwrap_or(&[]);
    let mut body_crc = crc32fast::Hasher::new();
    body_crc.update(body);

    if layout.verify {
        let stored = u32_at(raw, body_end).ok_or(Error::Truncated {
            what: "event checksum",
            needed: body_end + CRC_LEN,
            available: raw.len(),
        })?;
        let mut old = crc32fast::Hasher::new();
        old.update(raw.get(..HEADER_LEN).unwrap_or(&[]));
        old.combine(&body_crc);
        let computed = old.finalize();
        if stored != computed {
            return Err(Error::ChecksumMismatch {
                event_type: header.event_type,
                stored,
                computed,
            });
        }
    }

    let new_header = EventHeader {
        log_pos,
        flags: flags.unwrap_or(header.flags),
        ..header
    };
    let new_bytes = new_header.to_bytes();
    // Only log_pos and flags differ from the old header.
    if !(put_at(raw, LOG_POS_OFFSET, &log_pos.to_le_bytes())
        && put_at(raw, FLAGS_OFFSET, &new_header.flags.to_le_bytes()))
    {
        return Err(Error::Truncated {
            what: "event header",
            needed: HEADER_LEN,
            available: raw.len(),
        });
    }
    if has_slot {
        let mut new = crc32fast::Hasher::new();
        new.update(&new_bytes);
        new.combine(&body_crc);
        let crc = new.finalize();
        // The slot is the last 4 bytes (layout() guarantees they exist).
        put_at(raw, body_end, &crc.to_le_bytes());
    }
    Ok(())
}

/// Re-encodes an event for a stream with another checksum setting: adds or
/// strips the CRC and fixes `event_size` (for FORMAT_DESCRIPTION: rewrites
/// the algorithm byte and its checksum slot). Verifies the old CRC first.
pub fn convert_checksum(event: &Event<'_>, to: Checksum) -> Result<Vec<u8>> {
    event.verify_checksum()?;
    let is_fde = event.event_type() == EventType::FORMAT_DESCRIPTION;
    let mut out = Vec::with_capacity(event.len() + CRC_LEN);
    let mut body = event.body().to_vec();
    if is_fde {
        match body.last_mut() {
            Some(alg) => *alg = to.alg(),
            None => {
                return Err(Error::Malformed {
                    what: "FORMAT_DESCRIPTION event",
                    reason: "empty body",
                });
            }
        }
    }
    let trailer = if is_fde { CRC_LEN } else { to.trailer_len() };
    let size = u32::try_from(HEADER_LEN + body.len() + trailer)
        .map_err(|_| Error::TooLarge("event over 4 GiB"))?;
    let header = EventHeader {
        event_size: size,
        ..*event.header()
    };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&body);
    if trailer > 0 {
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    Ok(out)
}

/// Assigns consecutive positions to events so that they read as one
/// continuous binlog file: each event's log_pos becomes the end of the
/// previous one plus its own length.
///
/// Start it at 4 (after the magic) for a file that begins with its
/// FORMAT_DESCRIPTION, or wherever the replica's position is.
#[derive(Debug, Clone)]
pub struct Restamper {
    next: u64,
    checksum: Checksum,
}

impl Restamper {
    /// A file position `start` (where the next event begins) and the
    /// stream's checksum.
    pub fn new(start: u32, checksum: Checksum) -> Self {
        Restamper {
            next: u64::from(start),
            checksum,
        }
    }

    /// Where the next event will begin (= log_pos of the last one).
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The stream's checksum.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// Re-stamps `raw` in place as the next event of the file; returns its
    /// new log_pos. Fails (leaving `raw` and the position unchanged) on a
    /// bad event or if the end would pass 4 GiB (rotate before that).
    pub fn restamp_in_place(&mut self, raw: &mut [u8]) -> Result<u32> {
        let end = self
            .next
            .checked_add(raw.len() as u64)
            .and_then(|e| u32::try_from(e).ok())
            .ok_or(Error::TooLarge("binlog position past 4 GiB"))?;
        restamp_in_place(raw, self.checksum, end, None)?;
        self.next = u64::from(end);
        Ok(end)
    }

    /// Appends a re-stamped copy of `raw` to `out`; returns its new log_pos.
    /// On error `out` is unchanged.
    pub fn append(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<u32> {
        let start = out.len();
        out.extend_from_slice(raw);
        let tail = out.get_mut(start..).unwrap_or(&mut []);
        match self.restamp_in_place(tail) {
            Ok(pos) => Ok(pos),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }
}

/// Iterates over consecutive events in a buffer: a whole binlog file, or a
/// stored run of events. The checksum setting follows each
/// FORMAT_DESCRIPTION event met. Stops after the first error.
#[derive(Debug, Clone)]
pub struct EventReader<'a> {
    buf: &'a [u8],
    offset: usize,
    checksum: Checksum,
    failed: bool,
}

impl<'a> EventReader<'a> {
    /// Events packed back to back in `buf`, with the given checksum until a
    /// FORMAT_DESCRIPTION event says otherwise.
    pub fn new(buf: &'a [u8], checksum: Checksum) -> Self {
        EventReader {
            buf,
            offset: 0,
            checksum,
            failed: false,
        }
    }

    /// A binlog file: checks the magic and starts at offset 4. The file's
    /// first event is its FORMAT_DESCRIPTION, which sets the checksum (its
    /// own checksum slot is verified even when it says NONE: a server always
    /// fills it in a file).
    pub fn binlog_file(file: &'a [u8]) -> Result<Self> {
        let magic = *file.first_chunk::<4>().ok_or(Error::Truncated {
            what: "binlog file magic",
            needed: 4,
            available: file.len(),
        })?;
        if magic != BINLOG_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        Ok(EventReader {
            buf: file,
            offset: BINLOG_MAGIC.len(),
            checksum: Checksum::Crc32,
            failed: false,
        })
    }

    /// Offset of the next event in the buffer (for a binlog file: its file
    /// position).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The checksum setting for the next event.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }
}

impl<'a> Iterator for EventReader<'a> {
    type Item = Result<Event<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.buf.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        match Event::read(rest, self.checksum) {
            Ok((ev, _)) => {
                self.offset += ev.len();
                if ev.event_type() == EventType::FORMAT_DESCRIPTION {
                    self.checksum = ev.checksum();
                }
                Some(Ok(ev))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{EventSpec, build_event};
    use crate::gtid::Gtid;

    const FILE1: &[u8] = include_bytes!("../tests/data/fx-bin.000001");
    const FILE3: &[u8] = include_bytes!("../tests/data/fx-bin.000003");

    #[test]
    fn fde_of_a_file_in_use_verifies_with_the_flag_cleared() {
        // The first event after the magic of a real file is its FDE.
        let len = u32_at(FILE1, 4 + 9).unwrap() as usize;
        let mut fde = FILE1[4..4 + len].to_vec();
        Event::parse(&fde, Checksum::Crc32).unwrap();
        // MariaDB sets the in-use flag in place, without a new CRC.
        fde[17] |= flags::LOG_EVENT_BINLOG_IN_USE_F as u8;
        Event::parse(&fde, Checksum::Crc32).unwrap();
        // Any other change is still caught.
        fde[17] |= flags::LOG_EVENT_THREAD_SPECIFIC_F as u8;
        assert!(matches!(
            Event::parse(&fde, Checksum::Crc32),
            Err(Error::ChecksumMismatch { .. })
        ));
    }

    fn sample(checksum: Checksum) -> Vec<u8> {
        build_event(
            &EventSpec {
                timestamp: 1_700_000_000,
                event_type: EventType::XID,
                server_id: 3,
                log_pos: 1000,
                flags: 0,
            },
            &42u64.to_le_bytes(),
            checksum,
        )
        .unwrap()
    }

    #[test]
    fn parse_with_and_without_crc() {
        let raw = sample(Checksum::Crc32);
        assert_eq!(raw.len(), 19 + 8 + 4);
        let e = Event::parse(&raw, Checksum::Crc32).unwrap();
        assert_eq!(e.event_type(), EventType::XID);
        assert_eq!(e.body(), 42u64.to_le_bytes());
        assert_eq!(e.stored_crc(), Some(crc32(&raw[..27])));
        assert_eq!(e.xid().unwrap().xid, 42);
        assert_eq!((e.log_pos(), e.server_id(), e.flags()), (1000, 3, 0));
        assert_eq!(e.timestamp(), 1_700_000_000);
        assert_eq!(e.len(), raw.len());
        assert!(!e.is_empty() && !e.is_artificial());

        let plain = sample(Checksum::None);
        let e = Event::parse(&plain, Checksum::None).unwrap();
        assert_eq!(e.body(), 42u64.to_le_bytes());
        assert_eq!(e.stored_crc(), None);
        // Read with the wrong setting, the size still fits but the "CRC" is
        // body bytes: it does not verify.
        assert!(Event::parse(&plain, Checksum::Crc32).is_err());
    }

    #[test]
    fn bad_crc_is_detected() {
        let mut raw = sample(Checksum::Crc32);
        raw[20] ^= 1;
        assert!(matches!(
            Event::parse(&raw, Checksum::Crc32),
            Err(Error::ChecksumMismatch {
                event_type: EventType::XID,
                ..
            })
        ));
        let e = Event::parse_unverified(&raw, Checksum::Crc32).unwrap();
        assert!(e.verify_checksum().is_err());
        let mut raw = sample(Checksum::Crc32);
        let n = raw.len();
        raw[n - 1] ^= 0x80;
        assert!(Event::parse(&raw, Checksum::Crc32).is_err());
    }

    #[test]
    fn size_field_lies() {
        let raw = sample(Checksum::Crc32);
        // Longer buffer than the size field.
        let mut longer = raw.clone();
        longer.push(0);
        assert!(matches!(
            Event::parse(&longer, Checksum::Crc32),
            Err(Error::BadEventSize { .. })
        ));
        // Size field larger / smaller than the buffer.
        for size in [0u32, 1, 18, 19, 22, 30, 32, 1000, u32::MAX] {
            let mut r = raw.clone();
            r[9..13].copy_from_slice(&size.to_le_bytes());
            assert!(Event::parse(&r, Checksum::Crc32).is_err(), "{size}");
            assert!(
                Event::parse_unverified(&r, Checksum::Crc32).is_err(),
                "{size}"
            );
        }
        // A header-only event cannot hold a CRC.
        let mut tiny = raw[..19].to_vec();
        tiny[9..13].copy_from_slice(&19u32.to_le_bytes());
        assert!(Event::parse(&tiny, Checksum::Crc32).is_err());
        assert!(Event::parse(&tiny, Checksum::None).is_ok());
    }

    #[test]
    fn read_prefix_and_truncation() {
        let a = sample(Checksum::Crc32);
        let mut buf = a.clone();
        buf.extend_from_slice(&a);
        let (e, rest) = Event::read(&buf, Checksum::Crc32).unwrap();
        assert_eq!(e.raw(), &a[..]);
        assert_eq!(rest, &a[..]);
        for n in 0..a.len() {
            assert!(
                matches!(
                    Event::read(&a[..n], Checksum::Crc32),
                    Err(Error::Truncated { .. })
                ),
                "{n}"
            );
        }
        let mut small = a.clone();
        small[9..13].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            Event::read(&small, Checksum::Crc32),
            Err(Error::BadEventSize { .. })
        ));
    }

    #[test]
    fn restamp_keeps_body_and_fixes_crc() {
        let gtid_at = 828; // GTID 0-1-4 in file 1
        let (orig, _) = Event::read(&FILE1[gtid_at..], Checksum::Crc32).unwrap();
        let out = orig.restamped(123_456, Some(0x8)).unwrap();
        let e = Event::parse(&out, Checksum::Crc32).unwrap();
        assert_eq!(e.log_pos(), 123_456);
        assert_eq!(e.flags(), 0x8);
        assert_eq!(e.body(), orig.body());
        assert_eq!(e.gtid().unwrap().gtid(), Gtid::new(0, 1, 4));
        assert_eq!(&out[..13], &orig.raw()[..13]);
        assert_ne!(e.stored_crc(), orig.stored_crc());
        // Same position and flags: identical bytes.
        let same = orig.restamped(orig.log_pos(), None).unwrap();
        assert_eq!(same, orig.raw());
    }

    #[test]
    fn restamp_refuses_damaged_events() {
        let mut raw = sample(Checksum::Crc32);
        raw[22] ^= 4;
        let before = raw.clone();
        assert!(matches!(
            restamp_in_place(&mut raw, Checksum::Crc32, 99, None),
            Err(Error::ChecksumMismatch { .. })
        ));
        assert_eq!(raw, before);
        let mut short = sample(Checksum::Crc32);
        short.pop();
        let before = short.clone();
        assert!(restamp_in_place(&mut short, Checksum::Crc32, 99, None).is_err());
        assert_eq!(short, before);
        // Without checksums nothing can be verified; the header changes.
        let mut plain = sample(Checksum::None);
        restamp_in_place(&mut plain, Checksum::None, 99, None).unwrap();
        assert_eq!(Event::parse(&plain, Checksum::None).unwrap().log_pos(), 99);
    }

    #[test]
    fn fde_layout_follows_its_own_algorithm() {
        // File 3 was written with binlog_checksum=NONE: its FDE still ends
        // with algorithm 0 and a 4-byte slot holding a valid CRC.
        let mut r = EventReader::binlog_file(FILE3).unwrap();
        let fde = r.next().unwrap().unwrap();
        assert_eq!(fde.event_type(), EventType::FORMAT_DESCRIPTION);
        assert_eq!(fde.checksum(), Checksum::None);
        assert_eq!(fde.len(), 252);
        assert_eq!(fde.body().len(), 252 - 19 - 4);
        assert_eq!(fde.format_description().unwrap().checksum_alg, 0);
        let slot = u32_at(fde.raw(), 248).unwrap();
        assert_eq!(slot, crc32(&fde.raw()[..248]));
        // Parsed under either stream setting, it is the same event.
        for cs in [Checksum::None, Checksum::Crc32] {
            let e = Event::parse(fde.raw(), cs).unwrap();
            assert_eq!(e.checksum(), Checksum::None);
            assert_eq!(e.body(), fde.body());
        }
        assert_eq!(r.checksum(), Checksum::None);
        // Re-stamping an alg-NONE FDE keeps its slot a valid CRC.
        let out = fde.restamped(0, Some(0)).unwrap();
        assert_eq!(u32_at(&out, 248).unwrap(), crc32(&out[..248]));
        // A stale slot (a master edited the header of an alg-NONE FDE and
        // did not fix it) passes on a NONE stream, not on a CRC32 one.
        let mut stale = fde.raw().to_vec();
        stale[14] ^= 1;
        assert!(Event::parse(&stale, Checksum::None).is_ok());
        assert!(matches!(
            Event::parse(&stale, Checksum::Crc32),
            Err(Error::ChecksumMismatch { .. })
        ));
        // A CRC32 FDE whose algorithm byte was damaged to NONE is caught on
        // a CRC32 stream.
        let (crc_fde, _) = Event::read(&FILE1[4..], Checksum::Crc32).unwrap();
        let mut flipped = crc_fde.raw().to_vec();
        flipped[247] = 0;
        assert!(Event::parse(&flipped, Checksum::Crc32).is_err());
        // An FDE naming an unknown algorithm is refused.
        let mut bad = fde.raw().to_vec();
        bad[247] = 7;
        assert!(matches!(
            Event::parse(&bad, Checksum::None),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn convert_checksum_both_ways() {
        let with = sample(Checksum::Crc32);
        let without = sample(Checksum::None);
        let e = Event::parse(&with, Checksum::Crc32).unwrap();
        assert_eq!(convert_checksum(&e, Checksum::None).unwrap(), without);
        assert_eq!(convert_checksum(&e, Checksum::Crc32).unwrap(), with);
        let e = Event::parse(&without, Checksum::None).unwrap();
        assert_eq!(convert_checksum(&e, Checksum::Crc32).unwrap(), with);
        // FDE: the algorithm byte flips and the slot is recomputed.
        let (fde, _) = Event::read(&FILE1[4..], Checksum::Crc32).unwrap();
        let off = convert_checksum(&fde, Checksum::None).unwrap();
        assert_eq!(off.len(), fde.len());
        let e = Event::parse(&off, Checksum::Crc32).unwrap();
        assert_eq!(e.checksum(), Checksum::None);
        assert_eq!(u32_at(&off, 248).unwrap(), crc32(&off[..248]));
        let back = convert_checksum(&e, Checksum::Crc32).unwrap();
        assert_eq!(back, fde.raw());
    }

    #[test]
    fn restamper_is_continuous() {
        let mut r = Restamper::new(4, Checksum::Crc32);
        let mut out = Vec::new();
        let a = sample(Checksum::Crc32);
        assert_eq!(r.append(&a, &mut out).unwrap(), 4 + 31);
        assert_eq!(r.append(&a, &mut out).unwrap(), 4 + 62);
        assert_eq!(r.position(), 66);
        assert_eq!(r.checksum(), Checksum::Crc32);
        let mut damaged = a.clone();
        damaged[25] ^= 1;
        assert!(r.append(&damaged, &mut out).is_err());
        assert_eq!(out.len(), 62);
        assert_eq!(r.position(), 66);
        let mut rd = EventReader::new(&out, Checksum::Crc32);
        assert_eq!(rd.next().unwrap().unwrap().log_pos(), 35);
        assert_eq!(rd.next().unwrap().unwrap().log_pos(), 66);
        assert!(rd.next().is_none());
        // 4 GiB is the end of a file.
        let mut near = Restamper::new(u32::MAX - 10, Checksum::Crc32);
        let mut buf = a.clone();
        assert!(matches!(
            near.restamp_in_place(&mut buf),
            Err(Error::TooLarge(_))
        ));
        assert_eq!(buf, a);
    }

    #[test]
    fn reader_checks_magic_and_stops_on_error() {
        assert!(matches!(
            EventReader::binlog_file(b"\xfebix...."),
            Err(Error::BadMagic(_))
        ));
        assert!(EventReader::binlog_file(b"\xfeb").is_err());
        let only_magic = EventReader::binlog_file(&BINLOG_MAGIC).unwrap();
        assert_eq!(only_magic.count(), 0);
        let mut cut = FILE1[..300].to_vec();
        let mut rd = EventReader::binlog_file(&cut).unwrap();
        assert!(rd.next().unwrap().is_ok()); // FDE
        assert!(rd.next().unwrap().is_ok()); // GTID_LIST
        assert_eq!(rd.offset(), 285);
        assert!(matches!(rd.next(), Some(Err(Error::Truncated { .. }))));
        assert!(rd.next().is_none());
        cut[100] ^= 0xff;
        let mut rd = EventReader::binlog_file(&cut).unwrap();
        assert!(matches!(
            rd.next(),
            Some(Err(Error::ChecksumMismatch { .. }))
        ));
        assert!(rd.next().is_none());
    }

    #[test]
    fn owned_events() {
        let raw = sample(Checksum::Crc32);
        let b = EventBuf::parse(raw.clone(), Checksum::Crc32).unwrap();
        assert_eq!(b.event_type(), EventType::XID);
        assert_eq!(b.header().log_pos, 1000);
        assert_eq!(b.event().xid().unwrap().xid, 42);
        assert_eq!(b.as_bytes(), &raw[..]);
        let e = Event::parse(&raw, Checksum::Crc32).unwrap();
        assert_eq!(EventBuf::from(e), b);
        assert_eq!(b.clone().into_bytes(), raw);
        let mut bad = raw;
        bad[0] ^= 1;
        assert!(EventBuf::parse(bad, Checksum::Crc32).is_err());
    }
}
