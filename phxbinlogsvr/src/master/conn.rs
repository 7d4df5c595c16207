//! One client connection: the connection phase, then commands until
//! COM_QUIT, the client closing, or a dump ending.
//!
//! Commands:
//!
//! | command | answer |
//! | --- | --- |
//! | COM_QUERY (0x03) | see below |
//! | COM_REGISTER_SLAVE (0x15) | OK (the replica's server_id is logged) |
//! | COM_BINLOG_DUMP (0x12) | the stream ([`super::dump`]) |
//! | COM_PING (0x0e), COM_INIT_DB (0x02) | OK |
//! | COM_QUIT (0x01) | the connection closes |
//! | anything else | ERR 1047 "Unknown command"; the connection stays usable |
//!
//! Queries ([`super::query`] parses them):
//!
//! | statement | answer |
//! | --- | --- |
//! | `SELECT UNIX_TIMESTAMP()` | one row, the current time |
//! | `SELECT VERSION()`, an integer | one row |
//! | `SELECT @name` | the session's user variable, NULL if unset (`@master_binlog_checksum` after the replica set it: `CRC32` or `NONE`) |
//! | `SELECT @@[global.]name` | for `server_id`, `gtid_domain_id`, `binlog_checksum`, `binlog_format`, `version`, `version_comment`, `gtid_strict_mode`, `log_bin`; else ERR 1193 |
//! | `SHOW [GLOBAL] VARIABLES LIKE 'p'` | the variables above that match; so `rpl_semi_sync_master_enabled` has no row, and a semi-sync replica stays a plain one |
//! | `SET @name = value` | OK, stored in the session (`@master_heartbeat_period`, `@master_binlog_checksum`, `@mariadb_slave_capability`, `@slave_connect_state`, `@slave_gtid_strict_mode`, `@slave_gtid_ignore_duplicates`, `@slave_until_gtid` are the ones the dump reads; `@rpl_semi_sync_slave` is logged: this master never does semi-sync) |
//! | any other `SET` (`SET NAMES ...`, session variables) | OK, ignored: none matters to a dump |
//! | anything else | ERR 1235 "not supported", logged (text redacted if it mentions a password) |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use binlog::{Checksum, GtidPos};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::dump::{DumpEnd, DumpParams, DumpRequest, run_dump};
use super::error::ConnError;
use super::handshake::{AuthParams, handshake};
use super::metrics::inc;
use super::packet::{PacketReader, PacketWriter, err_packet, ok_packet, result_set};
use super::query::{Query, SelectItem, SetValue, like, parse};
use super::source::TransactionSource;
use super::{MasterConfig, Shared};

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_REGISTER_SLAVE: u8 = 0x15;

/// The capability a replica must announce (`MARIA_SLAVE_CAPABILITY_GTID`).
const CAPABILITY_GTID: u64 = 4;

/// The session variables a connection keeps.
#[derive(Debug, Default)]
struct Session {
    /// User variables (lower-case names, without `@`); `None` is NULL.
    vars: HashMap<String, Option<String>>,
    /// From COM_REGISTER_SLAVE.
    registered_server_id: Option<u32>,
}

impl Session {
    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).and_then(|v| v.as_deref())
    }
}

/// A reply to one command.
enum Reply {
    Ok,
    Err(u16, &'static [u8; 5], String),
    Rows(Vec<Vec<u8>>),
}

/// The system variables we report, in `SHOW VARIABLES` order.
fn system_variables(cfg: &MasterConfig) -> Vec<(&'static str, String)> {
    vec![
        ("binlog_checksum", checksum_name(cfg.checksum).to_string()),
        ("binlog_format", "ROW".to_string()),
        ("gtid_domain_id", cfg.gtid_domain_id.to_string()),
        ("gtid_strict_mode", "ON".to_string()),
        ("log_bin", "ON".to_string()),
        ("server_id", cfg.server_id.to_string()),
        ("version", cfg.server_version.clone()),
        ("version_comment", "phxsql binlog server".to_string()),
    ]
}

fn system_variable(cfg: &MasterConfig, name: &str) -> Option<String> {
    system_variables(cfg)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn checksum_name(c: Checksum) -> &'static str {
    match c {
        Checksum::None => "NONE",
        Checksum::Crc32 => "CRC32",
    }
}

/// A query text fit for a log line: short, and never one that could carry a
/// password.
fn loggable(sql: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    if lower.contains("password") || lower.contains("identified") {
        return "<redacted: mentions a password>".into();
    }
    let mut s: String = sql.chars().take(200).collect();
    if s.len() < sql.len() {
        s.push_str("...");
    }
    s
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve<S, R, W>(
    shared: &Arc<Shared<S>>,
    conn_id: u32,
    peer: SocketAddr,
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
) -> Result<(), ConnError>
where
    S: TransactionSource,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &shared.cfg;
    let params = AuthParams {
        server_version: &cfg.server_version,
        connection_id: conn_id,
        user: &cfg.user,
        password: cfg.password.expose(),
        peer_host: peer.ip().to_string(),
    };
    let client = tokio::time::timeout(cfg.handshake_timeout, handshake(reader, writer, &params))
        .await
        .map_err(|_| ConnError::Timeout("in the connection phase"))??;
    tracing::debug!(conn = conn_id, %peer, user = %client.user, "authenticated");

    let mut session = Session::default();
    loop {
        let mut seq = 0u8;
        let packet = match tokio::time::timeout(cfg.idle_timeout, reader.read(&mut seq)).await {
            Err(_) => return Err(ConnError::Timeout("waiting for a command")),
            Ok(r) => r?,
        };
        let Some(packet) = packet else {
            return Ok(()); // closed by the client
        };
        let Some((&command, body)) = packet.split_first() else {
            return Err(ConnError::Protocol("empty command packet".into()));
        };
        let reply = match command {
            COM_QUIT => return Ok(()),
            COM_PING | COM_INIT_DB => Reply::Ok,
            COM_QUERY => {
                inc(&shared.metrics.queries);
                let sql = String::from_utf8_lossy(body);
                query(shared, &mut session, conn_id, &sql)
            }
            COM_REGISTER_SLAVE => match body.first_chunk::<4>() {
                Some(id) => {
                    let id = u32::from_le_bytes(*id);
                    tracing::info!(conn = conn_id, %peer, replica_server_id = id, "replica registered");
                    session.registered_server_id = Some(id);
                    Reply::Ok
                }
                None => {
                    return Err(ConnError::Protocol("short COM_REGISTER_SLAVE".into()));
                }
            },
            COM_BINLOG_DUMP => {
                let Some(request) = DumpRequest::parse(body) else {
                    return Err(ConnError::Protocol("short COM_BINLOG_DUMP".into()));
                };
                match dump(
                    shared, &session, conn_id, peer, &request, reader, writer, &mut seq,
                )
                .await?
                {
                    // The replica went away; so does the connection.
                    DumpEnd::Closed => return Ok(()),
                    // A non-blocking dump or an ERR 1236: the client may go on.
                    DumpEnd::Eof | DumpEnd::UntilReached | DumpEnd::Error(_) => continue,
                }
            }
            other => {
                tracing::debug!(conn = conn_id, command = other, "unknown command");
                Reply::Err(1047, b"08S01", "Unknown command".into())
            }
        };
        match reply {
            Reply::Ok => writer.write(&mut seq, &ok_packet()).await?,
            Reply::Err(code, state, msg) => {
                inc(&shared.metrics.err_packets_sent);
                writer
                    .write(&mut seq, &err_packet(code, state, &msg))
                    .await?;
            }
            Reply::Rows(packets) => {
                for p in &packets {
                    writer.write(&mut seq, p).await?;
                }
            }
        }
        writer.flush().await?;
    }
}

fn rows1(column: &str, value: Option<String>) -> Reply {
    Reply::Rows(result_set(&[column], &[vec![value]]))
}

/// Answers one COM_QUERY (table in the module docs).
fn query<S>(shared: &Shared<S>, session: &mut Session, conn_id: u32, sql: &str) -> Reply {
    let cfg = &shared.cfg;
    tracing::debug!(conn = conn_id, query = %loggable(sql), "query");
    match parse(sql) {
        Query::Select { item, column } => match item {
            SelectItem::UnixTimestamp => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                rows1(&column, Some(now.to_string()))
            }
            SelectItem::Version => rows1(&column, Some(cfg.server_version.clone())),
            SelectItem::Number(n) => rows1(&column, Some(n)),
            SelectItem::UserVar(name) => rows1(&column, session.var(&name).map(str::to_string)),
            SelectItem::SysVar(name) => match system_variable(cfg, &name) {
                Some(v) => rows1(&column, Some(v)),
                None => Reply::Err(1193, b"HY000", format!("Unknown system variable '{name}'")),
            },
        },
        Query::ShowVariables { pattern } => {
            let rows: Vec<Vec<Option<String>>> = system_variables(cfg)
                .into_iter()
                .filter(|(n, _)| like(&pattern, n))
                .map(|(n, v)| vec![Some(n.to_string()), Some(v)])
                .collect();
            Reply::Rows(result_set(&["Variable_name", "Value"], &rows))
        }
        Query::SetUserVar { name, value } => {
            let value = match value {
                SetValue::Text(t) | SetValue::Number(t) => Some(t),
                SetValue::SysVar(v) => match system_variable(cfg, &v) {
                    Some(x) => Some(x),
                    None => {
                        return Reply::Err(
                            1193,
                            b"HY000",
                            format!("Unknown system variable '{v}'"),
                        );
                    }
                },
            };
            if name == "rpl_semi_sync_slave" {
                tracing::info!(
                    conn = conn_id,
                    "replica asked for semi-sync; this master does not do semi-sync (plain stream)"
                );
            }
            session.vars.insert(name, value);
            Reply::Ok
        }
        Query::SetOther => {
            tracing::debug!(conn = conn_id, query = %loggable(sql), "SET statement ignored");
            Reply::Ok
        }
        Query::Unknown => {
            inc(&shared.metrics.unknown_queries);
            tracing::warn!(conn = conn_id, query = %loggable(sql), "unknown query: ERR 1235");
            Reply::Err(
                1235,
                b"42000",
                "This binlog server does not support that statement".into(),
            )
        }
    }
}

/// What the session's variables ask of the dump, or the ERR 1236 text.
fn dump_params(
    cfg: &MasterConfig,
    session: &Session,
    request: &DumpRequest,
) -> Result<DumpParams, String> {
    let capability: u64 = session
        .var("mariadb_slave_capability")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if capability < CAPABILITY_GTID {
        return Err(format!(
            "The binlog server serves MariaDB GTID replicas only (@mariadb_slave_capability={capability}, 4 needed)"
        ));
    }
    let connect_state = match session.vars.get("slave_connect_state") {
        Some(Some(text)) => text
            .parse::<GtidPos>()
            .map_err(|e| format!("Malformed slave request: @slave_connect_state: {e}"))?,
        // No connect state: a position-based request. Only the very start
        // of the log can be served that way.
        _ => {
            if request.position > 4
                || !(request.file_name.is_empty() || request.file_name == cfg.file_name)
            {
                return Err(format!(
                    "The binlog server serves GTID replicas only (CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos); \
                     position {} in '{}' cannot be served",
                    request.position, request.file_name
                ));
            }
            GtidPos::new()
        }
    };
    let flag = |name: &str| {
        session
            .var(name)
            .is_some_and(|v| v.trim() == "1" || v.trim().eq_ignore_ascii_case("on"))
    };
    // A replica that never set @master_binlog_checksum cannot take CRCs.
    let checksum = if session.var("master_binlog_checksum").is_some() {
        cfg.checksum
    } else {
        Checksum::None
    };
    let heartbeat = match session.var("master_heartbeat_period") {
        Some(ns) => {
            let ns: f64 = ns.trim().parse().unwrap_or(0.0);
            (ns >= 1.0).then(|| Duration::from_nanos(ns.min(1e18) as u64))
        }
        None => cfg.default_heartbeat,
    };
    let until = match session.var("slave_until_gtid") {
        Some(text) => Some(
            text.parse::<GtidPos>()
                .map_err(|e| format!("Malformed slave request: @slave_until_gtid: {e}"))?,
        ),
        None => None,
    };
    Ok(DumpParams {
        checksum,
        heartbeat,
        connect_state,
        strict: flag("slave_gtid_strict_mode"),
        until,
    })
}

/// Runs a COM_BINLOG_DUMP: registers it (a previous dump of the same
/// replica is stopped, as MariaDB kills "zombie" dump threads), streams,
/// unregisters.
#[allow(clippy::too_many_arguments)]
async fn dump<S, R, W>(
    shared: &Arc<Shared<S>>,
    session: &Session,
    conn_id: u32,
    peer: SocketAddr,
    request: &DumpRequest,
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    seq: &mut u8,
) -> Result<DumpEnd, ConnError>
where
    S: TransactionSource,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &shared.cfg;
    let metrics = &shared.metrics;
    inc(&metrics.dumps_started);
    tracing::info!(
        conn = conn_id,
        %peer,
        replica_server_id = request.server_id,
        flags = request.flags,
        "COM_BINLOG_DUMP"
    );
    let params = match dump_params(cfg, session, request) {
        Ok(p) => p,
        Err(msg) => {
            inc(&metrics.dump_errors);
            inc(&metrics.err_packets_sent);
            tracing::warn!(conn = conn_id, error = %msg, "dump refused with ERR 1236");
            writer
                .write(
                    seq,
                    &err_packet(
                        super::dump::ER_MASTER_FATAL_ERROR_READING_BINLOG,
                        b"HY000",
                        &msg,
                    ),
                )
                .await?;
            writer.flush().await?;
            return Ok(DumpEnd::Error(msg));
        }
    };
    if request.server_id == cfg.server_id {
        tracing::warn!(
            conn = conn_id,
            server_id = request.server_id,
            "replica uses our own server_id: it will skip every event we send"
        );
    }

    let stop = Arc::new(Notify::new());
    if let Some((old_conn, old_stop)) = shared
        .dumps()
        .insert(request.server_id, (conn_id, Arc::clone(&stop)))
    {
        tracing::info!(
            conn = conn_id,
            old_conn,
            replica_server_id = request.server_id,
            "stopping the older dump of the same replica"
        );
        old_stop.notify_one();
    }
    let _active = super::metrics::GaugeGuard::new(&metrics.dumps_active);
    let settings = shared.stream_settings();
    let result = tokio::select! {
        r = run_dump(&shared.source, &settings, metrics, &params, request, reader, writer, seq) => r,
        () = stop.notified() => Err(ConnError::Stopped("a newer dump of the same replica replaced this one")),
    };
    {
        let mut dumps = shared.dumps();
        if dumps
            .get(&request.server_id)
            .is_some_and(|(c, _)| *c == conn_id)
        {
            dumps.remove(&request.server_id);
        }
    }
    tracing::info!(conn = conn_id, result = ?result, "dump ended");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert!(loggable("SET PASSWORD = 'x'").contains("redacted"));
        assert!(loggable("CHANGE MASTER TO master_password='x'").contains("redacted"));
        assert_eq!(loggable("SELECT 1"), "SELECT 1");
        assert!(loggable(&"x".repeat(500)).ends_with("..."));
    }
}
