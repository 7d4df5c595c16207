//! The client: connect, read events, send ACKs.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use binlog::{Checksum, Event, EventHeader, EventType, GtidPos};
use bytes::{Buf, Bytes};
use mysql_common::packets::SemiSyncAckPacket;
use mysql_common::proto::MySerialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::conn::{Conn, ServerErr, TextRow, is_eof};
use super::error::{Result, SemiSyncError};
use super::packet::{Packet, PacketReader, PacketWriter};

/// First byte of every semi-sync packet header (and of an ACK).
pub const SEMI_SYNC_MAGIC: u8 = 0xEF;
/// Flag bit of the semi-sync header: the master waits for an ACK at the
/// end of this event.
pub const SEMI_SYNC_ACK_REQUESTED: u8 = 0x01;
/// `@mariadb_slave_capability` we announce: MARIA_SLAVE_CAPABILITY_GTID
/// (4): GTID and GTID_LIST events are sent as they are, and the master
/// understands `@slave_connect_state`.
pub const MARIADB_SLAVE_CAPABILITY_GTID: u8 = 4;
/// Default largest packet accepted: 1 GiB (MariaDB's largest
/// `max_allowed_packet`, the largest event it can write) plus room for the
/// packet's prefix.
pub const DEFAULT_MAX_PACKET_SIZE: usize = (1 << 30) + 64 * 1024;

/// How to reach the local master and where to start.
#[derive(Clone)]
pub struct SemiSyncConfig {
    /// The master's address (the local `mariadbd`).
    pub addr: SocketAddr,
    /// Replication account (needs REPLICATION SLAVE).
    pub user: String,
    /// Its password (never logged; kept out of `Debug`).
    pub password: String,
    /// Our server id: unique among the master's replicas and different
    /// from the master's own.
    pub server_id: u32,
    /// `@master_heartbeat_period`: the master sends a HEARTBEAT event when
    /// it had nothing to send for this long. Zero switches heartbeats off.
    pub heartbeat_period: Duration,
    /// Start after this GTID position (`@slave_connect_state`): the dump
    /// begins with the first transaction not in it. Empty: from the start
    /// of the master's oldest binlog.
    pub connect_state: GtidPos,
    /// Limit for everything up to the first event of the dump (TCP connect,
    /// login, set-up queries, registration, dump request).
    pub connect_timeout: Duration,
    /// Fail a read that sees no byte for this long. `None`: three heartbeat
    /// periods plus a second (no limit if heartbeats are off).
    pub idle_timeout: Option<Duration>,
    /// Largest packet (= event + 3 bytes) accepted; see
    /// [`DEFAULT_MAX_PACKET_SIZE`].
    pub max_packet_size: usize,
}

impl SemiSyncConfig {
    /// A configuration with the defaults: heartbeat every second, empty
    /// connect state, 10 s connect timeout, automatic idle timeout.
    pub fn new(
        addr: SocketAddr,
        user: impl Into<String>,
        password: impl Into<String>,
        server_id: u32,
    ) -> Self {
        SemiSyncConfig {
            addr,
            user: user.into(),
            password: password.into(),
            server_id,
            heartbeat_period: Duration::from_secs(1),
            connect_state: GtidPos::new(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
        }
    }

    /// The idle timeout in force (see [`SemiSyncConfig::idle_timeout`]).
    pub fn effective_idle_timeout(&self) -> Option<Duration> {
        match self.idle_timeout {
            Some(t) => Some(t),
            None if self.heartbeat_period.is_zero() => None,
            None => Some(
                self.heartbeat_period
                    .saturating_mul(3)
                    .saturating_add(Duration::from_secs(1)),
            ),
        }
    }

    fn check(&self) -> Result<()> {
        if self.server_id == 0 {
            return Err(SemiSyncError::Config(
                "server_id 0 cannot replicate; use 1 or more".into(),
            ));
        }
        if self.user.is_empty() {
            return Err(SemiSyncError::Config("empty user name".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for SemiSyncConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemiSyncConfig")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &"***")
            .field("server_id", &self.server_id)
            .field("heartbeat_period", &self.heartbeat_period)
            .field("connect_state", &self.connect_state.to_string())
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_packet_size", &self.max_packet_size)
            .finish()
    }
}

/// What we learned about the master while connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterInfo {
    /// Server version from the greeting.
    pub server_version: String,
    /// Our connection's id on the master (`KILL` it to cut the dump).
    pub connection_id: u32,
    /// The master's `server_id`.
    pub server_id: u32,
    /// `rpl_semi_sync_master_wait_point` (`AFTER_SYNC` is lossless,
    /// `AFTER_COMMIT` is not).
    pub wait_point: String,
    /// The checksum the dump's events carry (`@master_binlog_checksum`).
    pub checksum: Checksum,
}

/// A position in the master's binlog: what an ACK names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BinlogPosition {
    /// Binlog file name (no directory), e.g. `mysql-bin.000002`.
    pub file: Arc<str>,
    /// Byte offset in that file (an event's end).
    pub pos: u64,
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// One event of the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplEvent {
    bytes: Bytes,
    header: EventHeader,
    ack_requested: bool,
    file: Arc<str>,
    checksum: Checksum,
}

impl ReplEvent {
    /// The raw event: header, body and checksum, exactly as the master sent
    /// it (without the packet's `0x00` / semi-sync prefix).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The raw event, by value.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The parsed common header.
    pub fn header(&self) -> &EventHeader {
        &self.header
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.header.event_type
    }

    /// Header `log_pos`: where the event ends in its binlog file (0 for
    /// artificial events).
    pub fn log_pos(&self) -> u32 {
        self.header.log_pos
    }

    /// True if the master waits for an ACK at this event's end (semi-sync
    /// flag bit 1): it is the last event of a transaction that is waiting
    /// to commit.
    pub fn ack_requested(&self) -> bool {
        self.ack_requested
    }

    /// The binlog file this event belongs to: from the last ROTATE before
    /// it (for a real ROTATE, the file it ends; for the artificial ROTATE
    /// at the start of the dump, the file it names).
    pub fn binlog_file(&self) -> &str {
        &self.file
    }

    /// (file, header log_pos): the position an ACK for this event names.
    pub fn position(&self) -> BinlogPosition {
        BinlogPosition {
            file: Arc::clone(&self.file),
            pos: u64::from(self.header.log_pos),
        }
    }

    /// The checksum setting of the stream at this event.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// A checked view (size and CRC verified) for the `binlog` crate.
    pub fn event(&self) -> Result<Event<'_>> {
        Ok(Event::parse(&self.bytes, self.checksum)?)
    }
}

/// Reads the events of the dump. Made by [`SemiSyncClient::into_split`].
#[derive(Debug)]
pub struct EventStream {
    reader: PacketReader,
    /// The first event, read by `connect` to see the dump really started.
    first: Option<Packet>,
    checksum: Checksum,
    file: Arc<str>,
    master: MasterInfo,
    /// Set by the first error: the stream cannot go on after it.
    failed: Option<String>,
}

impl EventStream {
    /// The next event. Heartbeats are returned too (type HEARTBEAT, not
    /// part of the binlog). The stream never ends by itself: it returns an
    /// error when the master ends the dump, fails, or goes away; after an
    /// error every call returns [`SemiSyncError::Broken`].
    ///
    /// Cancel-safe: bytes read before a cancelled call are kept.
    pub async fn next_event(&mut self) -> Result<ReplEvent> {
        if let Some(why) = &self.failed {
            return Err(SemiSyncError::Broken(why.clone()));
        }
        let r = self.next_inner().await;
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    async fn next_inner(&mut self) -> Result<ReplEvent> {
        let packet = match self.first.take() {
            Some(p) => p,
            None => self.reader.read("reading the binlog dump").await?,
        };
        let mut payload = packet.payload;
        match payload.first() {
            Some(0x00) => {}
            Some(0xFF) => {
                return Err(ServerErr::parse(&payload)?.into_error("in the binlog dump"));
            }
            _ if is_eof(&payload) => return Err(SemiSyncError::EndOfStream),
            _ => {
                return Err(SemiSyncError::Protocol(format!(
                    "binlog dump packet starting with {:#04x?}",
                    payload.first()
                )));
            }
        }
        // 0x00 | 0xEF | flag | event. We asked for semi-sync and checked
        // the first packet, so every packet carries the header (an event's
        // first byte is its timestamp's low byte, so it cannot tell).
        let (magic, flag) = match payload.get(1..3) {
            Some(&[m, f]) => (m, f),
            _ => return Err(SemiSyncError::Protocol("short binlog dump packet".into())),
        };
        if magic != SEMI_SYNC_MAGIC {
            return Err(SemiSyncError::Protocol(format!(
                "binlog dump packet without the semi-sync header (byte {magic:#04x})"
            )));
        }
        payload.advance(3);
        let bytes = payload.freeze();
        let header = EventHeader::parse(&bytes)?;
        if header.event_size as usize != bytes.len() {
            return Err(binlog::Error::BadEventSize {
                size: header.event_size,
                available: bytes.len(),
                reason: "size field disagrees with the packet",
            }
            .into());
        }
        let mut file = Arc::clone(&self.file);
        match header.event_type {
            EventType::ROTATE => {
                let ev = Event::parse(&bytes, self.checksum)?;
                let rotate = ev.rotate()?;
                let next: Arc<str> = Arc::from(rotate.file_name);
                debug!(
                    file = rotate.file_name,
                    position = rotate.position,
                    artificial = header.is_artificial(),
                    "rotate"
                );
                if header.is_artificial() || self.file.is_empty() {
                    // The dump's first event (or a restart of the file
                    // list): the event itself is not in any old file.
                    file = Arc::clone(&next);
                }
                self.file = next;
            }
            EventType::FORMAT_DESCRIPTION => {
                let ev = Event::parse(&bytes, self.checksum)?;
                self.checksum = ev.checksum();
            }
            _ => {}
        }
        Ok(ReplEvent {
            bytes,
            header,
            ack_requested: flag & SEMI_SYNC_ACK_REQUESTED != 0,
            file,
            checksum: self.checksum,
        })
    }

    /// The checksum the next events carry.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// The binlog file being read (from the last ROTATE).
    pub fn binlog_file(&self) -> &str {
        &self.file
    }

    /// What we learned about the master.
    pub fn master_info(&self) -> &MasterInfo {
        &self.master
    }
}

#[derive(Debug)]
struct AckWriter {
    writer: PacketWriter,
    /// The last position written, for logs and [`Acker::last_acked`].
    last: Option<BinlogPosition>,
}

/// Sends semi-sync ACKs. Cheap to clone; clones share the connection.
///
/// Dropping the last clone closes our sending side: the master then drops
/// the replica and the [`EventStream`] ends with an error.
#[derive(Debug, Clone)]
pub struct Acker {
    inner: Arc<Mutex<AckWriter>>,
}

impl Acker {
    fn new(writer: PacketWriter) -> Self {
        Acker {
            inner: Arc::new(Mutex::new(AckWriter { writer, last: None })),
        }
    }

    /// Tells the master that everything up to (`file`, `pos`) is safe: a
    /// commit waiting at or before that position returns. Send it only
    /// once the transaction ending there is chosen.
    ///
    /// The packet is `0xEF | u64 LE pos | file name` with sequence id 0 (the
    /// master reads ACKs on their own, outside its packet sequence).
    /// Cancel-safe: a half-written ACK is completed by the next call.
    pub async fn ack(&self, file: &str, pos: u64) -> Result<()> {
        let mut buf = Vec::with_capacity(9 + file.len());
        SemiSyncAckPacket::new(pos, file.as_bytes()).serialize(&mut buf);
        let mut w = self.inner.lock().await;
        w.writer.queue(0, &buf);
        w.writer.flush("sending a semi-sync ACK").await?;
        w.last = Some(BinlogPosition {
            file: Arc::from(file),
            pos,
        });
        Ok(())
    }

    /// [`Acker::ack`] at a [`BinlogPosition`].
    pub async fn ack_position(&self, p: &BinlogPosition) -> Result<()> {
        self.ack(&p.file, p.pos).await
    }

    /// The last position acknowledged.
    pub async fn last_acked(&self) -> Option<BinlogPosition> {
        self.inner.lock().await.last.clone()
    }
}

/// A semi-synchronous replica connection to the local master.
#[derive(Debug)]
pub struct SemiSyncClient {
    events: EventStream,
    acker: Acker,
}

impl SemiSyncClient {
    /// Connects, logs in, checks the master, and starts a semi-sync GTID
    /// binlog dump after `cfg.connect_state`. Returns once the master has
    /// sent the dump's first event, so a bad connect state (MariaDB error
    /// 1236) is reported here.
    pub async fn connect(cfg: &SemiSyncConfig) -> Result<SemiSyncClient> {
        cfg.check()?;
        match tokio::time::timeout(cfg.connect_timeout, connect_inner(cfg)).await {
            Ok(r) => r,
            Err(_) => Err(SemiSyncError::ConnectTimeout {
                addr: cfg.addr,
                timeout: cfg.connect_timeout,
            }),
        }
    }

    /// See [`EventStream::next_event`].
    pub async fn next_event(&mut self) -> Result<ReplEvent> {
        self.events.next_event().await
    }

    /// See [`Acker::ack`].
    pub async fn ack(&self, file: &str, pos: u64) -> Result<()> {
        self.acker.ack(file, pos).await
    }

    /// A handle to send ACKs from another task.
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// What we learned about the master.
    pub fn master_info(&self) -> &MasterInfo {
        self.events.master_info()
    }

    /// Splits into the reading half and the ACK half, for two tasks.
    pub fn into_split(self) -> (EventStream, Acker) {
        (self.events, self.acker)
    }
}

/// The value of a `SHOW VARIABLES` row named `name` (case-insensitive).
fn variable<'a>(rows: &'a [TextRow], name: &str) -> Option<&'a str> {
    rows.iter().find_map(|r| match r.as_slice() {
        [Some(n), Some(v)] if n.eq_ignore_ascii_case(name) => Some(v.as_str()),
        _ => None,
    })
}

async fn connect_inner(cfg: &SemiSyncConfig) -> Result<SemiSyncClient> {
    let stream = TcpStream::connect(cfg.addr)
        .await
        .map_err(|source| SemiSyncError::Connect {
            addr: cfg.addr,
            source,
        })?;
    // ACKs are tiny and latency is everything: no Nagle.
    stream
        .set_nodelay(true)
        .map_err(SemiSyncError::io("setting TCP_NODELAY"))?;
    let (rd, wr) = stream.into_split();
    let reader = PacketReader::new(rd, cfg.max_packet_size);
    let writer = PacketWriter::new(wr);
    let mut conn = Conn::login(reader, writer, &cfg.user, &cfg.password).await?;
    debug!(user = %cfg.user, connection_id = conn.connection_id, "logged in");

    // Is the master what we need? (No privilege needed for SHOW VARIABLES.)
    let vars = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
             ('server_id', 'rpl_semi_sync_master_enabled', 'rpl_semi_sync_master_wait_point')",
        )
        .await?;
    let enabled = variable(&vars, "rpl_semi_sync_master_enabled").unwrap_or_default();
    if !enabled.eq_ignore_ascii_case("ON") {
        return Err(SemiSyncError::SemiSyncDisabled {
            value: enabled.to_string(),
        });
    }
    let master_server_id: u32 = variable(&vars, "server_id")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| SemiSyncError::Protocol("SHOW VARIABLES gave no server_id".into()))?;
    if master_server_id == cfg.server_id {
        return Err(SemiSyncError::SameServerId(cfg.server_id));
    }
    let wait_point = variable(&vars, "rpl_semi_sync_master_wait_point")
        .unwrap_or_default()
        .to_string();
    if !wait_point.eq_ignore_ascii_case("AFTER_SYNC") {
        warn!(
            %wait_point,
            "the master's rpl_semi_sync_master_wait_point is not AFTER_SYNC: \
             other sessions can see a commit before it is acknowledged, and a crash can lose it"
        );
    }

    // The replica's conversation (sql/slave.cc), in its order.
    conn.exec(&format!(
        "SET @master_heartbeat_period= {}",
        cfg.heartbeat_period.as_nanos()
    ))
    .await?;
    conn.exec("SET @master_binlog_checksum= @@global.binlog_checksum")
        .await?;
    let rows = conn.query("SELECT @master_binlog_checksum").await?;
    let name = match rows.first().map(Vec::as_slice) {
        Some([Some(v)]) => v.clone(),
        _ => {
            return Err(SemiSyncError::Protocol(
                "SELECT @master_binlog_checksum returned no value".into(),
            ));
        }
    };
    let checksum = Checksum::from_name(&name)?;
    conn.exec(&format!(
        "SET @mariadb_slave_capability= {MARIADB_SLAVE_CAPABILITY_GTID}"
    ))
    .await?;
    // A GtidPos prints as digits, dashes and commas only: nothing to escape.
    conn.exec(&format!(
        "SET @slave_connect_state= '{}'",
        cfg.connect_state
    ))
    .await?;
    conn.exec("SET @slave_gtid_strict_mode= 1").await?;
    // This makes the dump semi-synchronous; it must precede the dump.
    conn.exec("SET @rpl_semi_sync_slave= 1").await?;
    conn.register_replica(cfg.server_id).await?;
    conn.request_dump(cfg.server_id).await?;

    // The first packet: the artificial ROTATE (or an ERR, e.g. 1236 for a
    // connect state the binlog cannot serve). Its timestamp is 0, so its
    // second byte tells whether the semi-sync header is there.
    let Conn {
        mut reader,
        writer,
        server_version,
        connection_id,
    } = conn;
    let first = reader
        .read("waiting for the first event of the dump")
        .await?;
    match first.payload.first() {
        Some(0x00) => {}
        Some(0xFF) => {
            return Err(ServerErr::parse(&first.payload)?.into_error("starting the binlog dump"));
        }
        _ if is_eof(&first.payload) => return Err(SemiSyncError::EndOfStream),
        _ => {
            return Err(SemiSyncError::Protocol(
                "unexpected first packet of the binlog dump".into(),
            ));
        }
    }
    if first.payload.get(1) != Some(&SEMI_SYNC_MAGIC) {
        return Err(SemiSyncError::NotSemiSync);
    }
    reader.set_idle_timeout(cfg.effective_idle_timeout());

    let master = MasterInfo {
        server_version,
        connection_id,
        server_id: master_server_id,
        wait_point,
        checksum,
    };
    info!(
        addr = %cfg.addr,
        server_id = cfg.server_id,
        master_server_id,
        master_version = %master.server_version,
        connect_state = %cfg.connect_state,
        checksum = checksum.name(),
        "semi-sync binlog dump started"
    );
    Ok(SemiSyncClient {
        events: EventStream {
            reader,
            first: Some(first),
            checksum,
            file: Arc::from(""),
            master,
            failed: None,
        },
        acker: Acker::new(writer),
    })
}
