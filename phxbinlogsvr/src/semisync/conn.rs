//! The command phase before the dump: login, a few text queries, the
//! replica registration and the dump request.
//!
//! mysql_common supplies the handshake packets, the native-password
//! scramble and the replication commands; framing ([`super::packet`]), the
//! OK / ERR / result-set reading and the checks are ours (mysql_common's
//! codec insists on sequence ids, and an ERR packet sent before the
//! handshake has no SQLSTATE, which its parser would reject).

use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, ComBinlogDump, ComRegisterSlave, HandshakePacket,
    HandshakeResponse,
};
use mysql_common::proto::{MyDeserialize, MySerialize};
use mysql_common::scramble::scramble_native;
use tracing::debug;

use super::error::{Result, SemiSyncError};
use super::packet::{Packet, PacketReader, PacketWriter, lenenc_int, lenenc_str};

/// `COM_QUERY`.
const COM_QUERY: u8 = 0x03;
/// Name of the one authentication plugin we speak.
const NATIVE_PASSWORD: &[u8] = b"mysql_native_password";
/// Largest packet we announce we accept (MariaDB's own maximum; the dump
/// thread of a master ignores it and sends events of any size).
const CLIENT_MAX_PACKET: u32 = 1 << 30;
/// Shown by the master in `SHOW SLAVE HOSTS`.
pub(crate) const REPORT_HOST: &str = "phxbinlogsvr";

/// A MariaDB error from an ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerErr {
    pub code: u16,
    pub state: String,
    pub message: String,
}

impl ServerErr {
    /// Parses an ERR packet (`0xFF | u16 code | ['#' state(5)] | message`).
    pub(crate) fn parse(payload: &[u8]) -> Result<ServerErr> {
        let (&[0xFF, lo, hi], rest) = payload
            .split_first_chunk::<3>()
            .ok_or_else(|| SemiSyncError::Protocol("short ERR packet".into()))?
        else {
            return Err(SemiSyncError::Protocol("not an ERR packet".into()));
        };
        let (state, message) = match rest.split_first() {
            Some((b'#', tail)) if tail.len() >= 5 => (&tail[..5], &tail[5..]),
            _ => (&b"HY000"[..], rest),
        };
        Ok(ServerErr {
            code: u16::from_le_bytes([lo, hi]),
            state: String::from_utf8_lossy(state).into_owned(),
            message: String::from_utf8_lossy(message).into_owned(),
        })
    }

    pub(crate) fn into_error(self, during: impl Into<String>) -> SemiSyncError {
        SemiSyncError::Server {
            during: during.into(),
            code: self.code,
            state: self.state,
            message: self.message,
        }
    }
}

/// What kind of packet a response is, by its first byte.
fn is_ok(p: &Packet) -> bool {
    p.payload.first() == Some(&0x00)
}
fn is_err(p: &Packet) -> bool {
    p.payload.first() == Some(&0xFF)
}
/// A classic EOF packet (0xFE and shorter than 9 bytes; a longer packet
/// starting with 0xFE is data: a length-encoded integer).
pub(crate) fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFE) && payload.len() < 9
}

/// One text-protocol row: column values, `None` for NULL.
pub(crate) type TextRow = Vec<Option<String>>;

/// A logged-in connection in the command phase.
#[derive(Debug)]
pub(crate) struct Conn {
    pub reader: PacketReader,
    pub writer: PacketWriter,
    /// From the greeting, e.g. `10.11.19-MariaDB-0+deb12u1-log`.
    pub server_version: String,
    pub connection_id: u32,
}

impl Conn {
    /// Reads the greeting and logs in with mysql_native_password.
    pub(crate) async fn login(
        mut reader: PacketReader,
        mut writer: PacketWriter,
        user: &str,
        password: &str,
    ) -> Result<Conn> {
        let greeting = reader.read("reading the server greeting").await?;
        if is_err(&greeting) {
            // Too many connections, host blocked, ...: sent instead of a greeting.
            let e = ServerErr::parse(&greeting.payload)?;
            return Err(e.into_error("before the handshake"));
        }
        let hs = HandshakePacket::deserialize((), &mut ParseBuf(&greeting.payload))
            .map_err(|e| SemiSyncError::Protocol(format!("bad server greeting: {e}")))?;
        let server_caps = hs.capabilities();
        let needed = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        if !server_caps.contains(needed) {
            return Err(SemiSyncError::Protocol(format!(
                "the server lacks capabilities we need ({:?})",
                needed.difference(server_caps)
            )));
        }
        // MariaDB prefixes "5.5.5-" for old MySQL clients; drop it.
        let full = hs.server_version_str();
        let server_version = full.strip_prefix("5.5.5-").unwrap_or(&full).to_string();
        let connection_id = hs.connection_id();
        let greeting_plugin = hs
            .auth_plugin_name_str()
            .map(|s| s.into_owned())
            .unwrap_or_default();
        debug!(
            %server_version,
            connection_id, %greeting_plugin, "server greeting"
        );

        // Whatever the greeting proposes, answer with mysql_native_password;
        // if the account uses another plugin the server asks us to switch.
        let scramble = native_scramble(&hs.nonce(), password);
        let caps = CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_LONG_FLAG
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let response = HandshakeResponse::new(
            Some(&scramble[..]),
            hs.server_version_parsed().unwrap_or((10, 11, 0)),
            Some(user.as_bytes()),
            None::<&[u8]>,
            Some(AuthPlugin::MysqlNativePassword),
            caps & server_caps,
            None,
            CLIENT_MAX_PACKET,
        );
        let mut buf = Vec::new();
        response.serialize(&mut buf);
        let mut seq = greeting.seq.wrapping_add(1);
        writer.send(seq, &buf, "sending the login").await?;

        loop {
            let p = reader.read("reading the login answer").await?;
            seq = p.seq.wrapping_add(1);
            match p.payload.first() {
                Some(0x00) => break,
                Some(0xFF) => {
                    let e = ServerErr::parse(&p.payload)?;
                    return Err(SemiSyncError::AuthFailed {
                        user: user.to_string(),
                        code: e.code,
                        state: e.state,
                        message: e.message,
                    });
                }
                Some(0xFE) => {
                    let switch = AuthSwitchRequest::deserialize((), &mut ParseBuf(&p.payload))
                        .map_err(|e| {
                            SemiSyncError::Protocol(format!("bad auth switch request: {e}"))
                        })?;
                    let plugin = switch.auth_plugin();
                    if plugin.as_bytes() != NATIVE_PASSWORD {
                        return Err(SemiSyncError::UnsupportedAuthPlugin {
                            plugin: String::from_utf8_lossy(plugin.as_bytes()).into_owned(),
                        });
                    }
                    debug!("auth switch to mysql_native_password");
                    let scramble = native_scramble(switch.plugin_data(), password);
                    writer
                        .send(seq, &scramble, "answering the auth switch")
                        .await?;
                }
                Some(0x01) => {
                    // AuthMoreData: caching_sha2_password and friends.
                    return Err(SemiSyncError::UnsupportedAuthPlugin {
                        plugin: greeting_plugin,
                    });
                }
                _ => {
                    return Err(SemiSyncError::Protocol(
                        "unexpected packet during login".into(),
                    ));
                }
            }
        }
        Ok(Conn {
            reader,
            writer,
            server_version,
            connection_id,
        })
    }

    /// Sends a command (sequence id 0) and reads the first answer packet.
    async fn command(&mut self, payload: &[u8], during: &'static str) -> Result<Packet> {
        self.writer.send(0, payload, during).await?;
        self.reader.read(during).await
    }

    /// Sends a command that must be answered with OK.
    async fn command_ok(&mut self, payload: &[u8], during: &'static str) -> Result<()> {
        let p = self.command(payload, during).await?;
        if is_ok(&p) {
            Ok(())
        } else if is_err(&p) {
            Err(ServerErr::parse(&p.payload)?.into_error(during))
        } else {
            Err(SemiSyncError::Protocol(format!(
                "expected OK {during}, got a packet starting with {:#04x?}",
                p.payload.first()
            )))
        }
    }

    /// Runs a statement that returns no rows.
    pub(crate) async fn exec(&mut self, sql: &str) -> Result<()> {
        let rows = self.query(sql).await?;
        if rows.is_empty() {
            Ok(())
        } else {
            Err(SemiSyncError::Protocol(format!(
                "{sql:?} returned rows; expected none"
            )))
        }
    }

    /// Runs a text query; returns its rows (none for a statement answered
    /// with OK). Values are decoded as UTF-8 (lossy): fine for the variables
    /// and status values we read.
    pub(crate) async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>> {
        debug!(sql, "query");
        let mut payload = Vec::with_capacity(1 + sql.len());
        payload.push(COM_QUERY);
        payload.extend_from_slice(sql.as_bytes());
        let first = self.command(&payload, "running a query").await?;
        if is_ok(&first) {
            return Ok(Vec::new());
        }
        if is_err(&first) {
            let e = ServerErr::parse(&first.payload)?;
            return Err(e.into_error(format!("running {sql:?}")));
        }
        let mut b = &first.payload[..];
        let columns = lenenc_int(&mut b)
            .ok_or_else(|| SemiSyncError::Protocol("bad result set header".into()))?;
        // Column definitions, then an EOF (we did not ask for DEPRECATE_EOF).
        for _ in 0..columns {
            self.reader.read("reading column definitions").await?;
        }
        let eof = self.reader.read("reading column definitions").await?;
        if !is_eof(&eof.payload) {
            return Err(SemiSyncError::Protocol(
                "no EOF after the column definitions".into(),
            ));
        }
        let mut rows = Vec::new();
        loop {
            let p = self.reader.read("reading rows").await?;
            if is_eof(&p.payload) {
                return Ok(rows);
            }
            if is_err(&p) {
                let e = ServerErr::parse(&p.payload)?;
                return Err(e.into_error(format!("reading the rows of {sql:?}")));
            }
            let mut b = &p.payload[..];
            let mut row = Vec::new();
            for _ in 0..columns {
                row.push(lenenc_str(&mut b)?.map(|v| String::from_utf8_lossy(v).into_owned()));
            }
            rows.push(row);
        }
    }

    /// `COM_REGISTER_SLAVE`: makes us visible in `SHOW SLAVE HOSTS`. Never
    /// carries a password.
    pub(crate) async fn register_replica(&mut self, server_id: u32) -> Result<()> {
        let mut buf = Vec::new();
        ComRegisterSlave::new(server_id)
            .with_hostname(REPORT_HOST.as_bytes())
            .serialize(&mut buf);
        self.command_ok(&buf, "registering as a replica (COM_REGISTER_SLAVE)")
            .await
    }

    /// `COM_BINLOG_DUMP` at position 4 of no file: with
    /// `@slave_connect_state` set, the master starts from the GTID state.
    /// The answer is the event stream (or an ERR), read by the caller.
    pub(crate) async fn request_dump(&mut self, server_id: u32) -> Result<()> {
        let mut buf = Vec::new();
        ComBinlogDump::new(server_id)
            .with_pos(4)
            .with_filename(&b""[..])
            .serialize(&mut buf);
        self.writer
            .send(0, &buf, "requesting the binlog dump (COM_BINLOG_DUMP)")
            .await?;
        Ok(())
    }
}

/// The mysql_native_password answer (empty for an empty password).
fn native_scramble(nonce: &[u8], password: &str) -> Vec<u8> {
    // The nonce is 20 bytes; MariaDB sends a trailing NUL in the switch request.
    let nonce = nonce.get(..20).unwrap_or(nonce);
    scramble_native(nonce, password.as_bytes()).map_or_else(Vec::new, |s| s.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::constants::StatusFlags;
    use tokio::net::{TcpListener, TcpStream};

    /// A fake server: greets proposing `greeting_plugin`, reads the login,
    /// then answers with `then` (raw payloads, sequence ids counted on),
    /// and returns what the client sent.
    async fn fake_login(
        greeting_plugin: &'static str,
        then: Vec<Vec<u8>>,
        password: &str,
    ) -> (Result<Conn>, Vec<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, wr) = s.into_split();
            let mut r = PacketReader::new(rd, 1 << 20);
            let mut w = PacketWriter::new(wr);
            let hs = HandshakePacket::new(
                10,
                &b"10.11.0-fake"[..],
                42,
                [1, 2, 3, 4, 5, 6, 7, 8],
                Some(&b"9abcdefghijk\0"[..]),
                CapabilityFlags::CLIENT_PROTOCOL_41
                    | CapabilityFlags::CLIENT_SECURE_CONNECTION
                    | CapabilityFlags::CLIENT_PLUGIN_AUTH
                    | CapabilityFlags::CLIENT_LONG_PASSWORD,
                33,
                StatusFlags::empty(),
                Some(greeting_plugin.as_bytes()),
            );
            let mut buf = Vec::new();
            hs.serialize(&mut buf);
            w.send(0, &buf, "greeting").await.unwrap();
            let mut got = Vec::new();
            for answer in then {
                let p = r.read("client").await.unwrap();
                got.push(p.payload.to_vec());
                w.send(p.seq.wrapping_add(1), &answer, "answer")
                    .await
                    .unwrap();
            }
            got
        });
        let (rd, wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let conn = Conn::login(
            PacketReader::new(rd, 1 << 20),
            PacketWriter::new(wr),
            "repl",
            password,
        )
        .await;
        (conn, server.await.unwrap())
    }

    #[tokio::test]
    async fn an_auth_switch_to_native_password_is_answered() {
        let mut switch = vec![0xFE];
        switch.extend_from_slice(b"mysql_native_password\0");
        let nonce: Vec<u8> = (1..=20).collect();
        switch.extend_from_slice(&nonce);
        switch.push(0);
        let ok = vec![0, 0, 0, 2, 0, 0, 0];
        let (conn, got) =
            fake_login("caching_sha2_password", vec![switch, ok], "repl-secret").await;
        let conn = conn.unwrap();
        assert_eq!(conn.server_version, "10.11.0-fake");
        assert_eq!(conn.connection_id, 42);
        // The login names the user and mysql_native_password; the answer to
        // the switch is the scramble with the new nonce.
        let login = &got[0];
        assert!(login.windows(5).any(|w| w == b"repl\0"));
        assert!(login.ends_with(b"mysql_native_password\0"));
        assert_eq!(got[1], native_scramble(&nonce, "repl-secret"));
    }

    #[tokio::test]
    async fn a_switch_to_another_plugin_is_refused_by_name() {
        let mut switch = vec![0xFE];
        switch.extend_from_slice(b"client_ed25519\0");
        switch.extend_from_slice(&[7; 32]);
        let (conn, _) = fake_login("mysql_native_password", vec![switch], "pw").await;
        assert!(matches!(
            conn,
            Err(SemiSyncError::UnsupportedAuthPlugin { plugin }) if plugin == "client_ed25519"
        ));
    }

    #[tokio::test]
    async fn a_refused_login_carries_code_and_message() {
        let mut err = vec![0xFF, 0x15, 0x04, b'#'];
        err.extend_from_slice(b"28000Access denied for user 'repl'");
        let (conn, _) = fake_login("mysql_native_password", vec![err], "pw").await;
        match conn {
            Err(SemiSyncError::AuthFailed {
                code,
                state,
                message,
                user,
            }) => {
                assert_eq!(
                    (code, state.as_str(), user.as_str()),
                    (1045, "28000", "repl")
                );
                assert_eq!(message, "Access denied for user 'repl'");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn err_packets_with_and_without_sqlstate() {
        let mut p = vec![0xFF, 0x15, 0x04, b'#'];
        p.extend_from_slice(b"28000Access denied");
        assert_eq!(
            ServerErr::parse(&p).unwrap(),
            ServerErr {
                code: 1045,
                state: "28000".into(),
                message: "Access denied".into()
            }
        );
        let mut p = vec![0xFF, 0x10, 0x04];
        p.extend_from_slice(b"Too many connections");
        let e = ServerErr::parse(&p).unwrap();
        assert_eq!((e.code, e.state.as_str()), (1040, "HY000"));
        assert_eq!(e.message, "Too many connections");
        assert!(ServerErr::parse(&[0xFF, 1]).is_err());
        assert!(ServerErr::parse(&[0x00, 1, 2]).is_err());
    }

    #[test]
    fn native_scramble_matches_the_reference() {
        // Empty password: empty answer.
        assert!(native_scramble(&[1; 20], "").is_empty());
        // A trailing NUL on the nonce does not change the answer.
        let mut nonce = vec![7u8; 20];
        let a = native_scramble(&nonce, "pw");
        nonce.push(0);
        assert_eq!(native_scramble(&nonce, "pw"), a);
        assert_eq!(a.len(), 20);
        // SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))), computed with Python's hashlib.
        let nonce: Vec<u8> = (1..=20).collect();
        let want = "503fb82f70efae9b2d85eaaa95a4fa7fc51419b6";
        let got: String = native_scramble(&nonce, "repl-secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want);
    }
}
