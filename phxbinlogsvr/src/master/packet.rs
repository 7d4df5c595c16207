//! MySQL protocol framing and the few server packets we write by hand (OK,
//! ERR, EOF, text result sets).
//!
//! A packet is a 3-byte little-endian payload length, a 1-byte sequence id
//! and the payload. A payload of 16 MiB - 1 bytes or more is split into
//! 16 MiB - 1 chunks, each with the next sequence id, and ends with a
//! shorter chunk (possibly empty). The sequence id restarts at 0 with each
//! command the client sends; every packet of the conversation, in either
//! direction, takes the next one.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::ConnError;
use super::metrics::{MasterMetrics, add};

/// Largest payload of one physical packet.
pub const MAX_CHUNK: usize = 0xff_ff_ff;

/// `SERVER_STATUS_AUTOCOMMIT`.
pub const STATUS_AUTOCOMMIT: u16 = 0x0002;

/// Reads packets from the client, checking sequence ids.
#[derive(Debug)]
pub struct PacketReader<R> {
    inner: R,
    max_payload: usize,
    metrics: Option<Arc<MasterMetrics>>,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// Reads from `inner`; a logical packet longer than `max_payload` is a
    /// protocol error (the client has no business sending one).
    pub fn new(inner: R, max_payload: usize) -> Self {
        PacketReader {
            inner,
            max_payload,
            metrics: None,
        }
    }

    /// Counts the bytes read in `metrics.bytes_received`.
    pub fn with_metrics(mut self, metrics: Arc<MasterMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The next logical packet, whose first chunk must carry sequence id
    /// `*seq` (advanced past every chunk read). `Ok(None)` when the client
    /// closed the connection cleanly before a new packet.
    pub async fn read(&mut self, seq: &mut u8) -> Result<Option<Vec<u8>>, ConnError> {
        let mut payload = Vec::new();
        let mut first = true;
        loop {
            let mut header = [0u8; 4];
            if first {
                // A clean close between packets is not an error.
                match self.inner.read(&mut header[..1]).await? {
                    0 => return Ok(None),
                    _ => self.inner.read_exact(&mut header[1..]).await?,
                };
            } else {
                self.inner.read_exact(&mut header).await?;
            }
            let len =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            if header[3] != *seq {
                return Err(ConnError::Protocol(format!(
                    "packet out of order: sequence id {} where {} was expected",
                    header[3], *seq
                )));
            }
            *seq = seq.wrapping_add(1);
            if payload.len().saturating_add(len) > self.max_payload {
                return Err(ConnError::Protocol(format!(
                    "client packet over {} bytes",
                    self.max_payload
                )));
            }
            let start = payload.len();
            payload.resize(start + len, 0);
            self.inner.read_exact(&mut payload[start..]).await?;
            if let Some(m) = &self.metrics {
                add(&m.bytes_received, 4 + len as u64);
            }
            first = false;
            if len < MAX_CHUNK {
                return Ok(Some(payload));
            }
        }
    }

    /// Reads whatever bytes arrive (used while streaming, to notice the
    /// client closing): `Ok(0)` at end of stream.
    pub async fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).await
    }
}

/// Writes packets, splitting large payloads.
#[derive(Debug)]
pub struct PacketWriter<W> {
    inner: W,
    /// Bytes written (headers included).
    written: u64,
    metrics: Option<Arc<MasterMetrics>>,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// Writes to `inner` (give it a buffered writer).
    pub fn new(inner: W) -> Self {
        PacketWriter {
            inner,
            written: 0,
            metrics: None,
        }
    }

    /// Counts the bytes written in `metrics.bytes_sent`.
    pub fn with_metrics(mut self, metrics: Arc<MasterMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes one logical packet starting at sequence id `*seq` (advanced
    /// past every chunk). Not flushed.
    pub async fn write(&mut self, seq: &mut u8, payload: &[u8]) -> io::Result<()> {
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_CHUNK);
            let (chunk, tail) = rest.split_at(n);
            // n <= 0xffffff: the three low bytes hold it.
            let header = [n as u8, (n >> 8) as u8, (n >> 16) as u8, *seq];
            *seq = seq.wrapping_add(1);
            self.inner.write_all(&header).await?;
            self.inner.write_all(chunk).await?;
            self.written += 4 + n as u64;
            if let Some(m) = &self.metrics {
                add(&m.bytes_sent, 4 + n as u64);
            }
            rest = tail;
            // A full chunk is always followed by another, possibly empty.
            if n < MAX_CHUNK {
                return Ok(());
            }
        }
    }

    /// Flushes the underlying writer.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }

    /// Shuts the writing side down (after a final ERR, say).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// An OK packet (no rows affected, autocommit on).
pub fn ok_packet() -> Vec<u8> {
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&STATUS_AUTOCOMMIT.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p
}

/// An ERR packet (protocol 4.1: with SQL state).
pub fn err_packet(code: u16, sql_state: &[u8; 5], message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xff);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(sql_state);
    // MariaDB caps messages at 512 bytes; keep them readable.
    let msg = message.as_bytes();
    p.extend_from_slice(&msg[..msg.len().min(512)]);
    p
}

/// An EOF packet (end of columns / rows, or end of a binlog dump).
pub fn eof_packet() -> Vec<u8> {
    let mut p = vec![0xfe];
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&STATUS_AUTOCOMMIT.to_le_bytes());
    p
}

/// A column definition (protocol 4.1) of a VARCHAR column in utf8.
fn column_def(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(32 + name.len());
    put_lenenc_str(&mut p, b"def"); // catalog
    put_lenenc_str(&mut p, b""); // schema
    put_lenenc_str(&mut p, b""); // table
    put_lenenc_str(&mut p, b""); // org_table
    put_lenenc_str(&mut p, name.as_bytes()); // name
    put_lenenc_str(&mut p, b""); // org_name
    p.push(0x0c); // length of the fixed fields
    p.extend_from_slice(&33u16.to_le_bytes()); // utf8_general_ci
    p.extend_from_slice(&1024u32.to_le_bytes()); // column length
    p.push(0xfd); // MYSQL_TYPE_VAR_STRING
    p.extend_from_slice(&0u16.to_le_bytes()); // flags
    p.push(0x1f); // decimals (31: not a fixed-point column)
    p.extend_from_slice(&[0, 0]); // filler
    p
}

/// The packets of a text result set: column count, column definitions, EOF,
/// the rows (each value a string or NULL), EOF. The client did not get
/// `CLIENT_DEPRECATE_EOF` from us, so both EOFs are sent.
pub fn result_set(columns: &[&str], rows: &[Vec<Option<String>>]) -> Vec<Vec<u8>> {
    let mut packets = Vec::with_capacity(columns.len() + rows.len() + 3);
    let mut count = Vec::new();
    put_lenenc_int(&mut count, columns.len() as u64);
    packets.push(count);
    packets.extend(columns.iter().map(|c| column_def(c)));
    packets.push(eof_packet());
    for row in rows {
        let mut p = Vec::new();
        for v in row {
            match v {
                Some(s) => put_lenenc_str(&mut p, s.as_bytes()),
                None => p.push(0xfb),
            }
        }
        packets.push(p);
    }
    packets.push(eof_packet());
    packets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc() {
        for (n, len) in [
            (0u64, 1usize),
            (250, 1),
            (251, 3),
            (0xffff, 3),
            (0x1_0000, 4),
            (0xff_ffff, 4),
            (0x100_0000, 9),
        ] {
            let mut v = Vec::new();
            put_lenenc_int(&mut v, n);
            assert_eq!(v.len(), len, "{n}");
        }
    }

    #[tokio::test]
    async fn split_and_reassemble() {
        for size in [0, 1, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 2 * MAX_CHUNK] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut w = PacketWriter::new(Vec::new());
            let mut seq = 5;
            w.write(&mut seq, &payload).await.unwrap();
            let chunks = size / MAX_CHUNK + 1;
            assert_eq!(seq, 5 + chunks as u8, "{size}");
            let bytes = w.inner;
            assert_eq!(bytes.len(), size + 4 * chunks);
            let mut r = PacketReader::new(&bytes[..], usize::MAX);
            let mut rseq = 5;
            let got = r.read(&mut rseq).await.unwrap().unwrap();
            assert_eq!(got, payload);
            assert_eq!(rseq, seq);
            assert!(r.read(&mut rseq).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn reader_rejects_bad_input() {
        // Wrong sequence id.
        let bytes = [1u8, 0, 0, 7, 0x0e];
        let mut r = PacketReader::new(&bytes[..], 1024);
        assert!(matches!(r.read(&mut 0).await, Err(ConnError::Protocol(_))));
        // Too long.
        let bytes = [0xffu8, 0xff, 0x0f, 0];
        let mut r = PacketReader::new(&bytes[..], 1024);
        assert!(matches!(r.read(&mut 0).await, Err(ConnError::Protocol(_))));
        // Truncated payload and truncated header.
        for bytes in [&[5u8, 0, 0, 0, 1, 2][..], &[5u8, 0][..]] {
            let mut r = PacketReader::new(bytes, 1024);
            assert!(matches!(r.read(&mut 0).await, Err(ConnError::Io(_))));
        }
    }
}
