//! Connection phase: the server greeting and `mysql_native_password`
//! authentication.
//!
//! 1. We send a protocol-10 greeting: our version string (it must start
//!    with a digit and a major version >= 10, or a MariaDB replica falls
//!    back to non-GTID replication), a 20-byte random scramble, and
//!    `mysql_native_password` as the default plugin.
//! 2. The client answers with a HandshakeResponse41. If it used another
//!    plugin we send an AuthSwitchRequest to `mysql_native_password` with
//!    the same scramble and read its new answer.
//! 3. We check the user name and the scramble
//!    (`SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw)))`) and answer OK, or
//!    ERR 1045 and close.
//!
//! We offer neither TLS nor compression (loopback only), and not
//! `CLIENT_DEPRECATE_EOF` (so result sets end with classic EOF packets).

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use mysql_common::scramble::scramble_native;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::ConnError;
use super::packet::{PacketReader, PacketWriter, err_packet, ok_packet};

/// The plugin we authenticate with.
pub const NATIVE_PLUGIN: &[u8] = b"mysql_native_password";

/// `utf8mb4_general_ci`, announced as the server's collation.
const COLLATION: u8 = 45;

/// The capabilities we announce.
pub fn server_capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_FOUND_ROWS
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_INTERACTIVE
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
}

/// A fresh scramble: 20 printable ASCII bytes (no NUL, which would end the
/// scramble's second part in the greeting).
pub fn new_scramble() -> [u8; 20] {
    let mut rng = rand::rng();
    let mut s = [0u8; 20];
    for b in &mut s {
        *b = rng.random_range(0x21u8..0x7f);
    }
    s
}

/// The greeting packet's payload.
pub fn greeting(server_version: &str, connection_id: u32, scramble: &[u8; 20]) -> Vec<u8> {
    let mut part1 = [0u8; 8];
    part1.copy_from_slice(&scramble[..8]);
    // The second part is 12 bytes and a NUL (auth_plugin_data_len = 21).
    let mut part2 = scramble[8..].to_vec();
    part2.push(0);
    let packet = HandshakePacket::new(
        10,
        server_version.as_bytes(),
        connection_id,
        part1,
        Some(part2),
        server_capabilities(),
        COLLATION,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(NATIVE_PLUGIN),
    );
    let mut out = Vec::with_capacity(96);
    packet.serialize(&mut out);
    out
}

/// What the client told us in the connection phase.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The authenticated user.
    pub user: String,
    /// Its capability flags (ANDed with ours).
    pub capabilities: CapabilityFlags,
}

/// Compares without an early exit (the time does not tell how many leading
/// bytes matched).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The expected `mysql_native_password` answer (empty for an empty password).
fn expected_answer(scramble: &[u8; 20], password: &str) -> Vec<u8> {
    scramble_native(scramble, password.as_bytes()).map_or_else(Vec::new, |a| a.to_vec())
}

/// Everything the connection phase needs from the server.
pub struct AuthParams<'a> {
    /// Version string for the greeting.
    pub server_version: &'a str,
    /// Connection id for the greeting.
    pub connection_id: u32,
    /// The only accepted user.
    pub user: &'a str,
    /// Its password (never logged).
    pub password: &'a str,
    /// The peer, for the ERR 1045 message.
    pub peer_host: String,
}

/// Runs the connection phase. On success the client is authenticated and
/// OK was sent; the command phase starts with sequence id 0. On failure an
/// ERR was sent when the protocol allowed it.
pub async fn handshake<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    params: &AuthParams<'_>,
) -> Result<ClientInfo, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let scramble = new_scramble();
    let mut seq = 0u8;
    writer
        .write(
            &mut seq,
            &greeting(params.server_version, params.connection_id, &scramble),
        )
        .await?;
    writer.flush().await?;

    let Some(payload) = reader.read(&mut seq).await? else {
        return Err(ConnError::Protocol(
            "client closed the connection before answering the greeting".into(),
        ));
    };
    let caps_raw = payload
        .first_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b))
        .unwrap_or(0);
    let caps = CapabilityFlags::from_bits_truncate(caps_raw);
    if !caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
        return Err(refuse(
            writer,
            &mut seq,
            1043,
            b"08S01",
            "Bad handshake: protocol 4.1 required",
        )
        .await);
    }
    if caps.contains(CapabilityFlags::CLIENT_SSL) && payload.len() <= 32 {
        return Err(refuse(
            writer,
            &mut seq,
            1043,
            b"08S01",
            "Bad handshake: TLS is not offered on this port",
        )
        .await);
    }
    let response: HandshakeResponse<'_> = match ParseBuf(&payload).parse(()) {
        Ok(r) => r,
        Err(e) => {
            return Err(refuse(
                writer,
                &mut seq,
                1043,
                b"08S01",
                &format!("Bad handshake: {e}"),
            )
            .await);
        }
    };
    let user = String::from_utf8_lossy(response.user()).into_owned();

    // The client's answer for mysql_native_password, switching plugin if
    // it started with another one.
    let answer: Vec<u8> = match response.auth_plugin() {
        None | Some(AuthPlugin::MysqlNativePassword) => response.scramble_buf().to_vec(),
        Some(other) => {
            tracing::debug!(
                plugin = %String::from_utf8_lossy(other.as_bytes()),
                "client used another auth plugin: switching it to mysql_native_password"
            );
            let mut data = scramble.to_vec();
            data.push(0);
            let mut switch = Vec::with_capacity(48);
            AuthSwitchRequest::new(NATIVE_PLUGIN, data).serialize(&mut switch);
            writer.write(&mut seq, &switch).await?;
            writer.flush().await?;
            match reader.read(&mut seq).await? {
                Some(a) => a,
                None => {
                    return Err(ConnError::Protocol(
                        "client closed the connection during the auth switch".into(),
                    ));
                }
            }
        }
    };

    let expected = expected_answer(&scramble, params.password);
    // Evaluate both checks: no early exit on the user name.
    let user_ok = same_bytes(user.as_bytes(), params.user.as_bytes());
    let pw_ok = same_bytes(&answer, &expected);
    if !(user_ok && pw_ok) {
        let msg = format!(
            "Access denied for user '{}'@'{}' (using password: {})",
            user,
            params.peer_host,
            if answer.is_empty() { "NO" } else { "YES" }
        );
        let _ = write_final(writer, &mut seq, &err_packet(1045, b"28000", &msg)).await;
        return Err(ConnError::AccessDenied { user });
    }
    writer.write(&mut seq, &ok_packet()).await?;
    writer.flush().await?;
    Ok(ClientInfo {
        user,
        capabilities: caps & server_capabilities(),
    })
}

/// Sends a last packet and flushes it (errors ignored by callers that are
/// closing anyway).
async fn write_final<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    seq: &mut u8,
    payload: &[u8],
) -> std::io::Result<()> {
    writer.write(seq, payload).await?;
    writer.flush().await
}

/// Sends an ERR and returns the protocol error that closes the connection.
async fn refuse<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    seq: &mut u8,
    code: u16,
    state: &[u8; 5],
    msg: &str,
) -> ConnError {
    let _ = write_final(writer, seq, &err_packet(code, state, msg)).await;
    ConnError::Protocol(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn greeting_parses_back() {
        let s = new_scramble();
        assert!(s.iter().all(|&b| (0x21..0x7f).contains(&b)));
        let g = greeting("10.11.0-MariaDB-phxsql", 7, &s);
        let p: HandshakePacket<'_> = ParseBuf(&g).parse(()).unwrap();
        assert_eq!(p.protocol_version(), 10);
        assert_eq!(p.server_version_ref(), b"10.11.0-MariaDB-phxsql");
        assert_eq!(p.connection_id(), 7);
        assert_eq!(p.nonce(), s.to_vec());
        assert_eq!(p.auth_plugin_name_ref(), Some(NATIVE_PLUGIN));
        assert!(
            p.capabilities().contains(
                CapabilityFlags::CLIENT_PLUGIN_AUTH | CapabilityFlags::CLIENT_PROTOCOL_41
            )
        );
    }

    #[test]
    fn native_password_check() {
        let s = *b"abcdefghijklmnopqrst";
        let good = expected_answer(&s, "secret");
        assert_eq!(good.len(), 20);
        assert_ne!(good, expected_answer(&s, "secreT"));
        assert!(expected_answer(&s, "").is_empty());
        assert!(same_bytes(&good, &good.clone()));
        assert!(!same_bytes(&good, &good[..19]));
    }

    /// The parser we rely on returns errors, never panics, on junk.
    #[test]
    fn handshake_response_parser_survives_junk() {
        let mut rng = rand::rng();
        for len in 0..200usize {
            for _ in 0..50 {
                let mut buf = vec![0u8; len];
                rng.fill_bytes(&mut buf);
                // Make the interesting flags likely.
                if len >= 4 && rng.random_bool(0.5) {
                    buf[0..4].copy_from_slice(&server_capabilities().bits().to_le_bytes());
                }
                let _ = ParseBuf(&buf).parse::<HandshakeResponse<'_>>(());
            }
        }
    }
}
