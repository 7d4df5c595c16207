//! COM_BINLOG_DUMP: streaming the log to a replica as one continuous
//! virtual binlog file.
//!
//! What the replica receives, each event in a packet `0x00 | event`:
//!
//! 1. an artificial ROTATE (timestamp 0, our server_id, log_pos 0, flags
//!    `LOG_EVENT_ARTIFICIAL_F`, body: position 4 + the virtual file name);
//! 2. a FORMAT_DESCRIPTION, as the first event of that file (log_pos = 4 +
//!    its size);
//! 3. optionally a GTID_LIST of the connect state ([`super::MasterConfig::send_gtid_list`]);
//! 4. every transaction after the connect state, in log order, each event
//!    byte for byte as the origin wrote it except the header log_pos
//!    (re-stamped to the event's end in the virtual file) and the CRC
//!    (recomputed); ANNOTATE_ROWS events only if the replica asked for them
//!    (dump flag 2), as MariaDB does;
//! 5. then, as the log grows, the new transactions, and a HEARTBEAT
//!    (log_pos = the current position, body = the file name) whenever
//!    nothing was sent for the heartbeat period.
//!
//! With `@slave_until_gtid` (`START SLAVE UNTIL master_gtid_pos=...`) the
//! dump sends, per domain, up to that GTID only, then a GTID_LIST flagged
//! `FLAG_UNTIL_REACHED` and EOF, as a MariaDB master does: the replica's IO
//! thread stops there too.
//!
//! A virtual file that passes [`super::MasterConfig::max_file_size`] ends,
//! between transactions, with a ROTATE to the next name (`...000002`),
//! followed by that file's FORMAT_DESCRIPTION: positions stay 32-bit and the
//! replica's bookkeeping stays what it is with a real master.
//!
//! Every packet takes the next sequence id; events of 16 MiB or more span
//! several packets. The loop writes one event at a time to the socket and
//! reads the next batch from the source only when the previous one was
//! written: a slow replica slows the dump down, nothing piles up in memory.
//!
//! Errors the replica should see (a connect state the log cannot serve, a
//! damaged stored event) end the dump with ERR 1236; the replica stops its
//! IO thread and shows the message in `Last_IO_Error`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use binlog::build::{self, EventSpec, FormatDescriptionSpec};
use binlog::{Checksum, EventType, Gtid, GtidPos, Restamper, RotateEvent, Transaction};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::ConnError;
use super::metrics::{MasterMetrics, add, inc};
use super::packet::{PacketReader, PacketWriter, eof_packet, err_packet};
use super::source::{SourceError, TransactionSource};

/// `BINLOG_DUMP_NON_BLOCK`: send what there is, then EOF.
pub const DUMP_NON_BLOCK: u16 = 1;
/// `BINLOG_SEND_ANNOTATE_ROWS_EVENT`: the replica wants ANNOTATE_ROWS.
pub const DUMP_SEND_ANNOTATE_ROWS: u16 = 2;

/// GTID_LIST flag (in the top 4 bits of the count word): the replica's
/// UNTIL position is reached.
pub const GTID_LIST_FLAG_UNTIL_REACHED: u8 = 1;

/// `ER_MASTER_FATAL_ERROR_READING_BINLOG`.
pub const ER_MASTER_FATAL_ERROR_READING_BINLOG: u16 = 1236;

/// A parsed COM_BINLOG_DUMP (after the command byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpRequest {
    /// Requested position (ignored in GTID mode).
    pub position: u32,
    /// Dump flags.
    pub flags: u16,
    /// The replica's server_id.
    pub server_id: u32,
    /// Requested file (ignored in GTID mode).
    pub file_name: String,
}

impl DumpRequest {
    /// `u32 pos | u16 flags | u32 server_id | file name (rest)`.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let position = u32::from_le_bytes(*body.first_chunk::<4>()?);
        let flags = u16::from_le_bytes(*body.get(4..)?.first_chunk::<2>()?);
        let server_id = u32::from_le_bytes(*body.get(6..)?.first_chunk::<4>()?);
        let name = body.get(10..)?;
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        Some(DumpRequest {
            position,
            flags,
            server_id,
            file_name: String::from_utf8_lossy(name).into_owned(),
        })
    }
}

/// What the dump needs from the session (the replica's SET statements).
#[derive(Debug, Clone)]
pub struct DumpParams {
    /// The stream's checksum (NONE for a replica that never set
    /// `@master_binlog_checksum`).
    pub checksum: Checksum,
    /// Heartbeat period (None: no heartbeats).
    pub heartbeat: Option<Duration>,
    /// `@slave_connect_state`, parsed.
    pub connect_state: GtidPos,
    /// `@slave_gtid_strict_mode`.
    pub strict: bool,
    /// `@slave_until_gtid` (`START SLAVE UNTIL master_gtid_pos=...`).
    pub until: Option<GtidPos>,
}

/// Server-wide settings the dump uses.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Our server_id (ROTATE, FORMAT_DESCRIPTION, HEARTBEAT headers).
    pub server_id: u32,
    /// Version string in the FORMAT_DESCRIPTION.
    pub server_version: String,
    /// First virtual file name.
    pub file_name: String,
    /// Rotate past this position.
    pub max_file_size: u32,
    /// Bytes per read from the source.
    pub read_batch_bytes: usize,
    /// Send a GTID_LIST after each FORMAT_DESCRIPTION.
    pub send_gtid_list: bool,
    /// Give up on a replica that takes no bytes for this long.
    pub write_timeout: Duration,
}

/// How a dump ended without breaking the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpEnd {
    /// The replica closed the connection.
    Closed,
    /// A non-blocking dump reached the end of the log (EOF sent).
    Eof,
    /// The `@slave_until_gtid` position was reached: a GTID_LIST flagged
    /// `FLAG_UNTIL_REACHED`, then EOF, were sent.
    UntilReached,
    /// ERR 1236 was sent with this message.
    Error(String),
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// The next virtual file name: the trailing number plus one, same width.
pub fn next_file_name(name: &str) -> String {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = name.split_at(name.len() - digits);
    let n: u64 = num.parse().unwrap_or(0);
    format!(
        "{stem}{:0width$}",
        n.saturating_add(1),
        width = digits.max(6)
    )
}

/// The sending half of a dump: positions, the current file, packet writing.
struct Stream<'a, W> {
    writer: &'a mut PacketWriter<W>,
    seq: &'a mut u8,
    settings: &'a StreamSettings,
    metrics: &'a MasterMetrics,
    checksum: Checksum,
    file: String,
    restamper: Restamper,
    /// Where the current file's first transaction would start (after its
    /// FORMAT_DESCRIPTION and GTID_LIST): a file that holds nothing past
    /// this is never rotated.
    file_body_start: u64,
    /// Reused packet buffer: `0x00 | event`.
    buf: Vec<u8>,
    last_sent: Instant,
}

impl<W: AsyncWrite + Unpin> Stream<'_, W> {
    /// Writes `buf` (already `0x00 | event`) as one packet.
    async fn write_buf(&mut self) -> Result<(), ConnError> {
        tokio::time::timeout(
            self.settings.write_timeout,
            self.writer.write(self.seq, &self.buf),
        )
        .await
        .map_err(|_| ConnError::Timeout("writing to the replica"))??;
        inc(&self.metrics.events_sent);
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Flushes, with the write timeout.
    async fn flush(&mut self) -> Result<(), ConnError> {
        tokio::time::timeout(self.settings.write_timeout, self.writer.flush())
            .await
            .map_err(|_| ConnError::Timeout("writing to the replica"))??;
        Ok(())
    }

    /// Sends the packet that ends the dump (EOF or ERR) and flushes.
    async fn send_final(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        tokio::time::timeout(
            self.settings.write_timeout,
            self.writer.write(self.seq, payload),
        )
        .await
        .map_err(|_| ConnError::Timeout("writing to the replica"))??;
        self.flush().await
    }

    /// Sends an event outside the virtual file (the artificial ROTATE).
    async fn send_unplaced(&mut self, event: &[u8]) -> Result<(), ConnError> {
        self.buf.clear();
        self.buf.push(0);
        self.buf.extend_from_slice(event);
        self.write_buf().await
    }

    /// Sends an event as the next one of the virtual file.
    async fn send_placed(&mut self, event: &[u8]) -> Result<(), StreamError> {
        self.buf.clear();
        self.buf.push(0);
        self.restamper.append(event, &mut self.buf)?;
        self.write_buf().await?;
        Ok(())
    }

    /// FORMAT_DESCRIPTION (and GTID_LIST) at the start of the current file.
    async fn send_file_header(&mut self, state: &GtidPos) -> Result<(), StreamError> {
        let fde = build::format_description(&FormatDescriptionSpec {
            server_version: &self.settings.server_version,
            timestamp: now_secs(),
            // 0: the replica must not take this for a master restart (it
            // would drop its replicated temporary tables).
            create_timestamp: 0,
            server_id: self.settings.server_id,
            log_pos: 0,
            flags: 0,
            checksum: self.checksum,
        })?;
        self.send_placed(&fde).await?;
        if self.settings.send_gtid_list {
            let gtids: Vec<Gtid> = state.iter().collect();
            let gl = build::gtid_list(
                &EventSpec {
                    timestamp: now_secs(),
                    event_type: EventType::GTID_LIST,
                    server_id: self.settings.server_id,
                    log_pos: 0,
                    flags: 0,
                },
                &gtids,
                0,
                self.checksum,
            )?;
            self.send_placed(&gl).await?;
        }
        self.file_body_start = self.restamper.position();
        Ok(())
    }

    /// The start of a dump: artificial ROTATE, then the file header.
    async fn start(&mut self, state: &GtidPos) -> Result<(), StreamError> {
        let rotate =
            build::artificial_rotate(self.settings.server_id, 4, &self.file, self.checksum)?;
        self.send_unplaced(&rotate).await?;
        self.send_file_header(state).await
    }

    /// Ends the current file with a ROTATE and starts the next one.
    async fn rotate(&mut self, state: &GtidPos) -> Result<(), StreamError> {
        let next = next_file_name(&self.file);
        let body = RotateEvent {
            position: 4,
            file_name: &next,
        }
        .encode_body();
        let ev = build::build_event(
            &EventSpec {
                timestamp: now_secs(),
                event_type: EventType::ROTATE,
                server_id: self.settings.server_id,
                log_pos: 0,
                flags: 0,
            },
            &body,
            self.checksum,
        )?;
        self.send_placed(&ev).await?;
        tracing::debug!(from = %self.file, to = %next, "rotating the virtual binlog file");
        self.file = next;
        self.restamper = Restamper::new(4, self.checksum);
        self.send_file_header(state).await
    }

    /// Sends one transaction, rotating first if the file is full.
    async fn send_transaction(
        &mut self,
        txn: &Transaction,
        annotate: bool,
        state: &GtidPos,
    ) -> Result<(), StreamError> {
        let pos = self.restamper.position();
        let size = txn.size() as u64 + 4 * txn.event_count() as u64;
        if pos > self.file_body_start
            && (pos >= u64::from(self.settings.max_file_size)
                || pos.saturating_add(size) >= u64::from(u32::MAX))
        {
            self.rotate(state).await?;
        }
        for ev in txn.events() {
            if ev.event_type() == EventType::ANNOTATE_ROWS && !annotate {
                continue;
            }
            if ev.checksum() == self.checksum {
                self.send_placed(ev.raw()).await?;
            } else {
                let converted = binlog::convert_checksum(&ev, self.checksum)?;
                self.send_placed(&converted).await?;
            }
        }
        inc(&self.metrics.transactions_sent);
        // Do not keep a huge event's buffer for the rest of the dump.
        if self.buf.capacity() > 8 << 20 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
        Ok(())
    }

    /// The fake GTID_LIST a MariaDB master sends when the replica's
    /// `START SLAVE UNTIL master_gtid_pos` is reached (its IO thread stops on
    /// it): the stream's GTID state, flag `FLAG_UNTIL_REACHED`, log_pos =
    /// the current position.
    async fn until_reached(&mut self, state: &GtidPos) -> Result<(), StreamError> {
        let gtids: Vec<Gtid> = state.iter().collect();
        let pos = u32::try_from(self.restamper.position())
            .map_err(|_| binlog::Error::TooLarge("binlog position past 4 GiB"))?;
        let ev = build::gtid_list(
            &EventSpec {
                timestamp: 0,
                event_type: EventType::GTID_LIST,
                server_id: self.settings.server_id,
                log_pos: pos,
                flags: binlog::flags::LOG_EVENT_ARTIFICIAL_F,
            },
            &gtids,
            GTID_LIST_FLAG_UNTIL_REACHED,
            self.checksum,
        )?;
        self.send_unplaced(&ev).await?;
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), StreamError> {
        let hb = build::heartbeat(
            self.settings.server_id,
            self.restamper.position(),
            &self.file,
            self.checksum,
        )?;
        self.send_unplaced(&hb).await?;
        inc(&self.metrics.heartbeats_sent);
        Ok(())
    }
}

/// Errors while streaming: the connection's, or the data's (reported to the
/// replica with ERR 1236).
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("cannot send a stored event: {0}")]
    Event(#[from] binlog::Error),
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        StreamError::Conn(ConnError::Io(e))
    }
}

/// Runs one dump until the replica goes away, a non-blocking dump is done,
/// or the source cannot serve it (ERR 1236). The caller drops this future to
/// stop it (shutdown, a newer dump of the same replica).
#[allow(clippy::too_many_arguments)]
pub async fn run_dump<S, R, W>(
    source: &Arc<S>,
    settings: &StreamSettings,
    metrics: &MasterMetrics,
    params: &DumpParams,
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
    let annotate = request.flags & DUMP_SEND_ANNOTATE_ROWS != 0;
    let non_block = request.flags & DUMP_NON_BLOCK != 0;
    let mut stream = Stream {
        writer,
        seq,
        settings,
        metrics,
        checksum: params.checksum,
        file: settings.file_name.clone(),
        restamper: Restamper::new(4, params.checksum),
        file_body_start: 4,
        buf: Vec::with_capacity(64 * 1024),
        last_sent: Instant::now(),
    };
    let result = stream_log(
        &mut stream,
        source,
        settings,
        params,
        annotate,
        non_block,
        reader,
    )
    .await;
    let msg = match result {
        Ok(end) => {
            if matches!(end, DumpEnd::Eof | DumpEnd::UntilReached) {
                stream.send_final(&eof_packet()).await?;
            }
            return Ok(end);
        }
        Err(StreamError::Conn(e)) => return Err(e),
        Err(StreamError::Source(e)) => e.to_string(),
        Err(StreamError::Event(e)) => format!("cannot send a stored event: {e}"),
    };
    inc(&metrics.dump_errors);
    inc(&metrics.err_packets_sent);
    tracing::warn!(replica = request.server_id, error = %msg, "dump ends with ERR 1236");
    stream
        .send_final(&err_packet(
            ER_MASTER_FATAL_ERROR_READING_BINLOG,
            b"HY000",
            &msg,
        ))
        .await?;
    Ok(DumpEnd::Error(msg))
}

#[allow(clippy::too_many_arguments)]
async fn stream_log<S, R, W>(
    stream: &mut Stream<'_, W>,
    source: &Arc<S>,
    settings: &StreamSettings,
    params: &DumpParams,
    annotate: bool,
    non_block: bool,
    reader: &mut PacketReader<R>,
) -> Result<DumpEnd, StreamError>
where
    S: TransactionSource,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let state = &params.connect_state;
    // Subscribe before planning so that nothing appended in between is
    // missed.
    let mut end_rx: watch::Receiver<u64> = source.subscribe();
    let mut next = source.start_after(state, params.strict)?;
    tracing::info!(
        connect_state = %state,
        strict = params.strict,
        start_index = next,
        checksum = ?params.checksum,
        heartbeat_ms = params.heartbeat.map(|d| d.as_millis() as u64),
        "binlog dump starts"
    );
    // The GTID state at the current point of the stream (for GTID_LISTs).
    let mut stream_state = state.clone();
    stream.start(&stream_state).await?;
    // START SLAVE UNTIL: the domains still to reach (MariaDB sends nothing
    // of a domain once its UNTIL GTID is reached, nor of a domain the UNTIL
    // position does not name, and stops when every domain is done).
    let mut until = params.until.clone().map(|mut u| {
        let done: Vec<u32> = u
            .iter()
            .filter(|g| state.contains(g))
            .map(|g| g.domain)
            .collect();
        for d in done {
            u.remove(d);
        }
        u
    });
    if until.as_ref().is_some_and(GtidPos::is_empty) {
        stream.until_reached(&stream_state).await?;
        return Ok(DumpEnd::UntilReached);
    }
    let mut watching = true;
    let mut scratch = [0u8; 512];

    loop {
        end_rx.borrow_and_update();
        let batch = source.read_from(next, settings.read_batch_bytes).await?;
        if !batch.is_empty() {
            for entry in batch {
                if entry.index < next {
                    continue;
                }
                next = entry.index + 1;
                let g = entry.transaction.gtid();
                if state.contains(&g) {
                    continue; // the replica has it already
                }
                let (send, last) = match until.as_mut() {
                    None => (true, false),
                    Some(u) => match u.get(g.domain) {
                        // Domain done, or not in the UNTIL position.
                        None => (false, false),
                        Some(ug) if g.seq >= ug.seq => {
                            u.remove(g.domain);
                            // Past it (the UNTIL GTID is not in the log):
                            // this one is beyond the position, not sent.
                            (g.seq == ug.seq, u.is_empty())
                        }
                        Some(_) => (true, false),
                    },
                };
                if send {
                    stream
                        .send_transaction(&entry.transaction, annotate, &stream_state)
                        .await?;
                }
                stream_state.set(g);
                if last {
                    stream.until_reached(&stream_state).await?;
                    return Ok(DumpEnd::UntilReached);
                }
            }
            continue;
        }
        if non_block {
            return Ok(DumpEnd::Eof);
        }

        // Caught up: flush, then wait for new transactions, the heartbeat
        // period, or the replica closing.
        stream.flush().await?;
        let deadline = params.heartbeat.map(|p| stream.last_sent + p);
        tokio::select! {
            changed = end_rx.changed(), if watching => {
                if changed.is_err() {
                    // The source is gone: nothing new will come; keep the
                    // replica alive with heartbeats until it disconnects.
                    watching = false;
                }
            }
            () = sleep_until_opt(deadline) => {
                stream.heartbeat().await?;
                stream.flush().await?;
            }
            read = reader.read_raw(&mut scratch) => {
                match read {
                    Ok(0) => return Ok(DumpEnd::Closed),
                    Ok(n) => {
                        // A replica sends nothing during a dump (no
                        // semi-sync here): ignore stray bytes.
                        add(&stream.metrics.bytes_received, n as u64);
                        tracing::debug!(bytes = n, "ignoring bytes from the replica during the dump");
                    }
                    Err(e) => return Err(ConnError::Io(e).into()),
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A sanity check that an event we are about to send parses (tests).
#[cfg(test)]
fn parses(ev: &[u8], cs: Checksum) -> bool {
    binlog::Event::parse(ev, cs).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_request() {
        let mut b = 4u32.to_le_bytes().to_vec();
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&77u32.to_le_bytes());
        b.extend_from_slice(b"mysql-bin.000003");
        let r = DumpRequest::parse(&b).unwrap();
        assert_eq!(
            r,
            DumpRequest {
                position: 4,
                flags: 2,
                server_id: 77,
                file_name: "mysql-bin.000003".into()
            }
        );
        assert_eq!(DumpRequest::parse(&b[..10]).unwrap().file_name, "");
        for n in 0..10 {
            assert!(DumpRequest::parse(&b[..n]).is_none());
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(next_file_name("phxsql-bin.000001"), "phxsql-bin.000002");
        assert_eq!(next_file_name("phxsql-bin.999999"), "phxsql-bin.1000000");
        assert_eq!(next_file_name("x.0000009"), "x.0000010");
        assert_eq!(next_file_name("plain"), "plain000001");
    }

    #[test]
    fn built_events_parse() {
        let rot = build::artificial_rotate(9, 4, "phxsql-bin.000001", Checksum::Crc32).unwrap();
        assert!(parses(&rot, Checksum::Crc32));
        let hb = build::heartbeat(9, 1234, "phxsql-bin.000001", Checksum::None).unwrap();
        assert!(parses(&hb, Checksum::None));
    }
}
