//! The crate's error type.

use crate::types::EventType;

/// Everything that can go wrong while reading, building or assembling
/// events. No function of this crate panics on bad input: it returns one of
/// these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the structure it should hold. For a stream
    /// this can mean "wait for more bytes"; inside an event whose size is
    /// known it means the event is malformed.
    #[error("short buffer reading {what}: need {needed} bytes, have {available}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed (from the start of `what`).
        needed: usize,
        /// Bytes available.
        available: usize,
    },

    /// The header's `event_size` is impossible (smaller than a header plus
    /// checksum) or disagrees with the buffer the event was given in.
    #[error("bad event size field {size} (buffer holds {available} bytes): {reason}")]
    BadEventSize {
        /// The header's event_size.
        size: u32,
        /// Bytes in the buffer.
        available: usize,
        /// Why it is wrong.
        reason: &'static str,
    },

    /// The CRC32 stored after the body does not match header + body.
    #[error(
        "checksum mismatch in {event_type} event: stored {stored:#010x}, computed {computed:#010x}"
    )]
    ChecksumMismatch {
        /// Type of the damaged event.
        event_type: EventType,
        /// CRC stored in the event.
        stored: u32,
        /// CRC computed over header and body.
        computed: u32,
    },

    /// A typed accessor was called on an event of another type.
    #[error("expected a {expected} event, found {found}")]
    WrongEventType {
        /// The type the accessor reads.
        expected: EventType,
        /// The event's type.
        found: EventType,
    },

    /// A field holds a value its layout does not allow.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The structure being read.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A layout or feature this crate does not handle (e.g. a checksum
    /// algorithm other than NONE/CRC32, a non-19-byte common header).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A binlog file does not start with the magic `\xfebin`.
    #[error("not a binlog file: bad magic {0:02x?}")]
    BadMagic([u8; 4]),

    /// A GTID or GTID position in text form could not be parsed.
    #[error("invalid GTID text {text:?}: {reason}")]
    BadGtidText {
        /// The offending text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A GTID does not move its replication domain forward.
    #[error("GTID {new} does not follow {current} (domain {domain})")]
    GtidOutOfOrder {
        /// The domain.
        domain: u32,
        /// The position's GTID in that domain.
        current: crate::gtid::Gtid,
        /// The GTID that should have followed it.
        new: crate::gtid::Gtid,
    },

    /// The transaction assembler met an event where the stream's grammar
    /// does not allow it (e.g. a row event outside a GTID group, a ROTATE
    /// inside one).
    #[error("unexpected {event_type} event {context}")]
    UnexpectedEvent {
        /// The event's type.
        event_type: EventType,
        /// Where it was found.
        context: String,
    },

    /// A value does not fit its field (an event over 4 GiB, a position past
    /// 4 GiB in a 32-bit log_pos, a too long server version string, ...).
    #[error("too large: {0}")]
    TooLarge(&'static str),
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
