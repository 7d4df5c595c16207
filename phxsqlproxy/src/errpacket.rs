//! The one MySQL packet the proxy writes itself: an error sent *instead of*
//! the server greeting, so that a client the proxy cannot route gets a
//! proper error message rather than a dropped socket. MariaDB does the same
//! for "Too many connections" and "Host ... is blocked".
//!
//! Layout: 3-byte length, sequence id 0, then `0xFF`, the error code (2
//! bytes, little-endian) and the message. No `#SQLSTATE` marker: before the
//! handshake a client knows nothing of the server's capabilities, and
//! MariaDB's own pre-handshake errors leave it out too.

/// `ER_CON_COUNT_ERROR`: the proxy's `max_connections` is reached.
pub const ER_CON_COUNT_ERROR: u16 = 1040;
/// `ER_SERVER_SHUTDOWN`: no master or no healthy replica to route to, or the
/// backend cannot be reached. Its SQLSTATE class is 08 (connection
/// exception), so drivers and pools treat it as a transient connection
/// failure worth a retry. (A client-side code such as 2003 cannot be used:
/// libmariadb rejects codes 2000-2999 and 5000-5999 from a server as a
/// malformed packet.)
pub const ER_SERVER_SHUTDOWN: u16 = 1053;

/// The bytes of an error packet with `code` and `message` (truncated to fit
/// one packet, which it always does in practice).
pub fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(0xFF_FFFF - 3)];
    let len = 3 + msg.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
    out.push(0); // sequence id
    out.push(0xFF);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = error_packet(1053, "no master");
        assert_eq!(&p[..4], &[12, 0, 0, 0]);
        assert_eq!(p[4], 0xFF);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 1053);
        assert_eq!(&p[7..], b"no master");
    }
}
