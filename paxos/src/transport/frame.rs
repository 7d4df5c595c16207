//! Frame codec: pure encode/decode of the wire format, no I/O.
//!
//! ```text
//! +-------------+----------------+----------------+-------------+-----------+
//! | body_len    | cluster_id     | from_node      | crc32       | payload   |
//! | u32 LE      | u64 LE         | u64 LE         | u32 LE      | ...       |
//! +-------------+----------------+----------------+-------------+-----------+
//!               \_________________ body_len bytes __________________________/
//! ```
//!
//! `crc32` (crc32fast, i.e. CRC-32/ISO-HDLC) covers `cluster_id`, `from_node`
//! and `payload`, in that order, as they appear on the wire.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Size of the `body_len` field.
pub const LEN_FIELD: usize = 4;
/// Fixed part of the body: cluster_id + from_node + crc32.
pub const BODY_HEADER_LEN: usize = 8 + 8 + 4;
/// Everything in front of the payload.
pub const HEADER_LEN: usize = LEN_FIELD + BODY_HEADER_LEN;

/// One decoded frame. `payload` shares the read buffer's allocation (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub cluster_id: u64,
    pub from: u64,
    pub payload: Bytes,
}

impl Frame {
    /// Bytes this frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Result of a decode attempt that did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame was removed from the front of the buffer.
    Frame(Frame),
    /// The buffer holds only part of a frame; at least this many more bytes
    /// are needed. Callers may use it to reserve the whole frame at once.
    NeedMore(usize),
}

/// The byte stream is not a valid frame sequence; the connection must be
/// dropped since there is no way to resynchronise.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame body length {0} is shorter than the {BODY_HEADER_LEN}-byte header")]
    TooShort(u64),
    #[error("frame body length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("frame checksum mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
}

fn checksum(cluster_id: u64, from: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&cluster_id.to_le_bytes());
    h.update(&from.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Builds the header for `payload`. The payload itself is written separately
/// so large payloads are never copied into an intermediate buffer.
pub fn encode_header(
    cluster_id: u64,
    from: u64,
    payload: &[u8],
) -> Result<[u8; HEADER_LEN], FrameError> {
    let body_len = BODY_HEADER_LEN as u64 + payload.len() as u64;
    let body_len = u32::try_from(body_len).map_err(|_| FrameError::TooLarge {
        len: body_len,
        max: u64::from(u32::MAX),
    })?;
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&body_len.to_le_bytes());
    h[4..12].copy_from_slice(&cluster_id.to_le_bytes());
    h[12..20].copy_from_slice(&from.to_le_bytes());
    h[20..24].copy_from_slice(&checksum(cluster_id, from, payload).to_le_bytes());
    Ok(h)
}

/// Encodes a whole frame into one buffer (copies the payload; meant for tests
/// and tools, the transport writes header and payload separately).
pub fn encode(cluster_id: u64, from: u64, payload: &[u8]) -> Result<BytesMut, FrameError> {
    let header = encode_header(cluster_id, from, payload)?;
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Tries to take one frame off the front of `buf`.
///
/// `max_body_len` bounds `body_len`; it is checked as soon as the length field
/// is available so a hostile length never makes the caller buffer that much.
/// On `NeedMore` the buffer is left untouched.
pub fn decode(buf: &mut BytesMut, max_body_len: usize) -> Result<Decoded, FrameError> {
    let Some(len_bytes) = buf.first_chunk::<LEN_FIELD>() else {
        return Ok(Decoded::NeedMore(LEN_FIELD - buf.len()));
    };
    let body_len = u32::from_le_bytes(*len_bytes);
    if (body_len as usize) < BODY_HEADER_LEN {
        return Err(FrameError::TooShort(u64::from(body_len)));
    }
    if body_len as usize > max_body_len {
        return Err(FrameError::TooLarge {
            len: u64::from(body_len),
            max: max_body_len as u64,
        });
    }
    let total = LEN_FIELD + body_len as usize;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total - buf.len()));
    }

    let mut frame = buf.split_to(total);
    frame.advance(LEN_FIELD);
    let cluster_id = frame.get_u64_le();
    let from = frame.get_u64_le();
    let expected = frame.get_u32_le();
    // What is left is the payload; freezing keeps it zero-copy.
    let payload = frame.freeze();
    let actual = checksum(cluster_id, from, &payload);
    if actual != expected {
        return Err(FrameError::CrcMismatch { expected, actual });
    }
    Ok(Decoded::Frame(Frame {
        cluster_id,
        from,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn frame(cluster_id: u64, from: u64, payload: &[u8]) -> Frame {
        Frame {
            cluster_id,
            from,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn round_trip_several_frames_in_one_buffer() {
        let frames = [
            frame(7, 1, b"hello"),
            frame(7, 2, b""),
            frame(u64::MAX, u64::MAX, &[0xAB; 1000]),
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            buf.extend_from_slice(&encode(f.cluster_id, f.from, &f.payload).unwrap());
        }
        for f in &frames {
            let before = buf.len();
            assert_eq!(decode(&mut buf, MAX).unwrap(), Decoded::Frame(f.clone()));
            assert_eq!(before - buf.len(), f.wire_len());
        }
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf, MAX).unwrap(), Decoded::NeedMore(LEN_FIELD));
    }

    #[test]
    fn header_layout_is_little_endian() {
        let buf = encode(0x0102_0304_0506_0708, 9, b"xy").unwrap();
        assert_eq!(&buf[0..4], &(20u32 + 2).to_le_bytes());
        assert_eq!(&buf[4..12], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[12..20], &9u64.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[4..20]);
        h.update(b"xy");
        assert_eq!(&buf[20..24], &h.finalize().to_le_bytes());
        assert_eq!(&buf[24..], b"xy");
    }

    #[test]
    fn crc_mismatch_is_detected() {
        // Corrupt each covered region in turn: cluster id, from, crc, payload.
        for pos in [4, 13, 21, HEADER_LEN + 2] {
            let mut buf = encode(1, 2, b"payload").unwrap();
            buf[pos] ^= 0x40;
            assert!(
                matches!(decode(&mut buf, MAX), Err(FrameError::CrcMismatch { .. })),
                "corruption at byte {pos} not detected"
            );
        }
    }

    #[test]
    fn short_buffer_needs_more_and_is_untouched() {
        let full = encode(1, 2, b"0123456789").unwrap();
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            match decode(&mut buf, MAX).unwrap() {
                Decoded::NeedMore(n) if cut < LEN_FIELD => assert_eq!(n, LEN_FIELD - cut),
                Decoded::NeedMore(n) => assert_eq!(n, full.len() - cut),
                other => panic!("decoded {other:?} from {cut} bytes"),
            }
            assert_eq!(&buf[..], &full[..cut]);
        }
    }

    #[test]
    fn length_too_short_for_header() {
        let mut buf = BytesMut::from(&19u32.to_le_bytes()[..]);
        assert_eq!(decode(&mut buf, MAX), Err(FrameError::TooShort(19)));
    }

    #[test]
    fn length_beyond_limit_rejected_before_body_arrives() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(
            decode(&mut buf, MAX),
            Err(FrameError::TooLarge { len, .. }) if len == u64::from(u32::MAX)
        ));
        // Exactly at the limit is fine.
        let payload = vec![1u8; 100];
        let mut buf = encode(1, 2, &payload).unwrap();
        let limit = BODY_HEADER_LEN + payload.len();
        assert!(matches!(decode(&mut buf, limit), Ok(Decoded::Frame(_))));
        let mut buf = encode(1, 2, &payload).unwrap();
        assert!(matches!(
            decode(&mut buf, limit - 1),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
