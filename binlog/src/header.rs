//! The 19-byte common event header.

use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::types::EventType;

/// Length of the common header of every event (binlog version 4).
pub const HEADER_LEN: usize = 19;

/// Offset of the u32 `event_size` field in the header.
pub const EVENT_SIZE_OFFSET: usize = 9;
/// Offset of the u32 `log_pos` field in the header.
pub const LOG_POS_OFFSET: usize = 13;
/// Offset of the u16 `flags` field in the header.
pub const FLAGS_OFFSET: usize = 17;

/// The common header: all little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventHeader {
    /// Seconds since the epoch when the statement began (0 for artificial
    /// events and heartbeats).
    pub timestamp: u32,
    /// The event type.
    pub event_type: EventType,
    /// Server that originally wrote the event (for a GTID event, the GTID's
    /// server id).
    pub server_id: u32,
    /// Whole event length: header, body and checksum.
    pub event_size: u32,
    /// Position of the end of this event in the master's binlog file (0 for
    /// artificial events).
    pub log_pos: u32,
    /// `LOG_EVENT_*_F` bits, see [`crate::flags`].
    pub flags: u16,
}

impl EventHeader {
    /// Reads a header from the first 19 bytes of `buf`. Only the length is
    /// checked here; see [`crate::Event::parse`] for the size field.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let mut c = Cursor::new(buf, "event header");
        Ok(EventHeader {
            timestamp: c.u32()?,
            event_type: EventType(c.u8()?),
            server_id: c.u32()?,
            event_size: c.u32()?,
            log_pos: c.u32()?,
            flags: c.u16()?,
        })
    }

    /// The 19 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let (ts, rest) = b.split_at_mut(4);
        ts.copy_from_slice(&self.timestamp.to_le_bytes());
        let (ty, rest) = rest.split_at_mut(1);
        ty.copy_from_slice(&[self.event_type.0]);
        let (sid, rest) = rest.split_at_mut(4);
        sid.copy_from_slice(&self.server_id.to_le_bytes());
        let (size, rest) = rest.split_at_mut(4);
        size.copy_from_slice(&self.event_size.to_le_bytes());
        let (pos, fl) = rest.split_at_mut(4);
        pos.copy_from_slice(&self.log_pos.to_le_bytes());
        fl.copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Overwrites the first 19 bytes of `buf` with this header.
    pub fn write_to(&self, buf: &mut [u8]) -> Result<()> {
        let available = buf.len();
        let dst = buf
            .first_chunk_mut::<HEADER_LEN>()
            .ok_or(Error::Truncated {
                what: "event header",
                needed: HEADER_LEN,
                available,
            })?;
        *dst = self.to_bytes();
        Ok(())
    }

    /// True if the event was made up by a master (`LOG_EVENT_ARTIFICIAL_F`).
    pub fn is_artificial(&self) -> bool {
        self.flags & crate::flags::LOG_EVENT_ARTIFICIAL_F != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write_round_trip() {
        // The artificial ROTATE header shape: ts 0, type 4, server 7, size
        // 0x2c, log_pos 0, flags 0x20.
        let bytes: [u8; 19] = [
            0, 0, 0, 0, 4, 7, 0, 0, 0, 0x2c, 0, 0, 0, 0, 0, 0, 0, 0x20, 0,
        ];
        let h = EventHeader::parse(&bytes).unwrap();
        assert_eq!(h.timestamp, 0);
        assert_eq!(h.event_type, EventType::ROTATE);
        assert_eq!(h.server_id, 7);
        assert_eq!(h.event_size, 0x2c);
        assert_eq!(h.log_pos, 0);
        assert_eq!(h.flags, 0x20);
        assert!(h.is_artificial());
        assert_eq!(h.to_bytes(), bytes);
        let mut out = [0xffu8; 25];
        h.write_to(&mut out).unwrap();
        assert_eq!(&out[..19], &bytes);
        assert_eq!(&out[19..], &[0xff; 6]);
    }

    #[test]
    fn all_fields_little_endian() {
        let h = EventHeader {
            timestamp: 0x0403_0201,
            event_type: EventType::GTID,
            server_id: 0x0807_0605,
            event_size: 0x0c0b_0a09,
            log_pos: 0x100f_0e0d,
            flags: 0x1211,
        };
        let b = h.to_bytes();
        assert_eq!(
            b,
            [
                1, 2, 3, 4, 0xa2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0x11, 0x12
            ]
        );
        assert_eq!(EventHeader::parse(&b).unwrap(), h);
    }

    #[test]
    fn short_buffers_are_errors() {
        for n in 0..HEADER_LEN {
            let buf = vec![0u8; n];
            assert!(matches!(
                EventHeader::parse(&buf),
                Err(Error::Truncated { .. })
            ));
            let mut out = vec![0u8; n];
            assert!(
                EventHeader::parse(&[0u8; 19])
                    .unwrap()
                    .write_to(&mut out)
                    .is_err()
            );
        }
    }
}
