//! MySQL protocol packet framing on a split TCP stream.
//!
//! A packet is `u24 LE payload length | u8 sequence id | payload`. A
//! payload of 2^24 - 1 bytes or more is cut into chunks of exactly
//! 2^24 - 1 bytes, each with its own header, ended by a shorter chunk
//! (possibly empty). The reader glues chunks back into one payload; the
//! writer cuts them.
//!
//! Both halves are cancel-safe in the mini-redis way: bytes read but not yet
//! returned as a packet stay in the reader's buffer, bytes queued but not yet
//! written stay in the writer's, so a future dropped half-way (a `select!`,
//! a timeout) loses nothing and the next call carries on.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::error::{Result, SemiSyncError};

/// Largest chunk payload; a chunk this long means "more follows".
pub(crate) const MAX_CHUNK: usize = 0xFF_FFFF;
/// Bytes of a packet header.
const HEADER: usize = 4;
/// Read at least this much per system call when the buffer has room to
/// spare: many small events then arrive in one read.
const MIN_READ: usize = 64 * 1024;

/// One logical packet (chunks glued together).
#[derive(Debug)]
pub(crate) struct Packet {
    /// Sequence id of the packet's last chunk.
    pub seq: u8,
    /// The payload.
    pub payload: BytesMut,
}

fn chunk_header(buf: &[u8]) -> Option<(usize, u8)> {
    let h = buf.get(..HEADER)?;
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    Some((len, h[3]))
}

/// Reads packets.
#[derive(Debug)]
pub(crate) struct PacketReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    max_packet: usize,
    idle_timeout: Option<Duration>,
}

impl PacketReader {
    pub(crate) fn new(rd: OwnedReadHalf, max_packet: usize) -> Self {
        PacketReader {
            rd,
            buf: BytesMut::with_capacity(MIN_READ),
            max_packet,
            idle_timeout: None,
        }
    }

    /// Fail a read that waits longer than this for the next bytes.
    pub(crate) fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.idle_timeout = timeout;
    }

    /// The next packet. `during` names what we were doing, for errors.
    pub(crate) async fn read(&mut self, during: &'static str) -> Result<Packet> {
        loop {
            if let Some(p) = self.parse()? {
                return Ok(p);
            }
            self.fill(during).await?;
        }
    }

    /// Takes one complete packet off the front of the buffer, if there is
    /// one; otherwise makes room for the rest of it and returns `None`.
    fn parse(&mut self) -> Result<Option<Packet>> {
        let mut offset = 0;
        let mut total = 0usize;
        loop {
            let Some((len, seq)) = chunk_header(self.buf.get(offset..).unwrap_or_default()) else {
                return Ok(None);
            };
            total = total.saturating_add(len);
            if total > self.max_packet {
                return Err(SemiSyncError::PacketTooLarge {
                    limit: self.max_packet,
                });
            }
            let end = offset + HEADER + len;
            if self.buf.len() < end {
                // Room for the whole chunk at once, so that a large event
                // is read straight into place.
                self.buf.reserve(end - self.buf.len());
                return Ok(None);
            }
            if len < MAX_CHUNK {
                let mut raw = self.buf.split_to(end);
                if offset == 0 {
                    // One chunk: no copy.
                    raw.advance(HEADER);
                    return Ok(Some(Packet { seq, payload: raw }));
                }
                // Several chunks: glue the payloads together (one copy).
                let mut payload = BytesMut::with_capacity(total);
                while let Some((n, _)) = chunk_header(&raw) {
                    raw.advance(HEADER);
                    let n = n.min(raw.len());
                    payload.extend_from_slice(&raw[..n]);
                    raw.advance(n);
                }
                return Ok(Some(Packet { seq, payload }));
            }
            offset = end;
        }
    }

    async fn fill(&mut self, during: &'static str) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(MIN_READ);
        }
        let read = self.rd.read_buf(&mut self.buf);
        let n = match self.idle_timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .map_err(|_| SemiSyncError::IdleTimeout(t))?,
            None => read.await,
        }
        .map_err(SemiSyncError::io(during))?;
        if n == 0 {
            return Err(SemiSyncError::Closed { during });
        }
        Ok(())
    }
}

/// Writes packets.
#[derive(Debug)]
pub(crate) struct PacketWriter {
    wr: OwnedWriteHalf,
    /// Queued bytes not yet written.
    pending: BytesMut,
}

impl PacketWriter {
    pub(crate) fn new(wr: OwnedWriteHalf) -> Self {
        PacketWriter {
            wr,
            pending: BytesMut::new(),
        }
    }

    /// Queues `payload` as a packet starting at sequence id `seq`; returns
    /// the sequence id after it.
    pub(crate) fn queue(&mut self, mut seq: u8, payload: &[u8]) -> u8 {
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_CHUNK);
            let (chunk, tail) = rest.split_at(n);
            // n <= 2^24 - 1, so the three low bytes hold it.
            let len = n.to_le_bytes();
            self.pending
                .extend_from_slice(&[len[0], len[1], len[2], seq]);
            self.pending.extend_from_slice(chunk);
            seq = seq.wrapping_add(1);
            rest = tail;
            if n < MAX_CHUNK {
                return seq;
            }
        }
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self, during: &'static str) -> Result<()> {
        while !self.pending.is_empty() {
            let n = self
                .wr
                .write_buf(&mut self.pending)
                .await
                .map_err(SemiSyncError::io(during))?;
            if n == 0 {
                return Err(SemiSyncError::Closed { during });
            }
        }
        self.wr.flush().await.map_err(SemiSyncError::io(during))
    }

    /// Queues and writes one packet; returns the next sequence id.
    pub(crate) async fn send(
        &mut self,
        seq: u8,
        payload: &[u8],
        during: &'static str,
    ) -> Result<u8> {
        let next = self.queue(seq, payload);
        self.flush(during).await?;
        Ok(next)
    }
}

/// Reads a length-encoded integer; `None` for the NULL marker (0xFB) or a
/// short buffer.
pub(crate) fn lenenc_int(buf: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = buf.split_first()?;
    let width = match first {
        0..=0xFA => {
            *buf = rest;
            return Some(u64::from(first));
        }
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    let bytes = rest.get(..width)?;
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(bytes);
    *buf = &rest[width..];
    Some(u64::from_le_bytes(v))
}

/// Reads a length-encoded string; `Ok(None)` for SQL NULL.
pub(crate) fn lenenc_str<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>> {
    if buf.first() == Some(&0xFB) {
        *buf = &buf[1..];
        return Ok(None);
    }
    let len = lenenc_int(buf)
        .ok_or_else(|| SemiSyncError::Protocol("bad length-encoded string".into()))?;
    let len = usize::try_from(len)
        .map_err(|_| SemiSyncError::Protocol("length-encoded string too long".into()))?;
    let s = buf.get(..len).ok_or_else(|| {
        SemiSyncError::Protocol("length-encoded string past the packet end".into())
    })?;
    *buf = &buf[len..];
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn packets_of_every_size_class_round_trip() {
        let (a, b) = pair().await;
        let (_ra, wa) = a.into_split();
        let (rb, _wb) = b.into_split();
        let mut w = PacketWriter::new(wa);
        let mut r = PacketReader::new(rb, 1 << 30);
        let sizes = [
            0,
            1,
            MAX_CHUNK - 1,
            MAX_CHUNK,
            MAX_CHUNK + 1,
            2 * MAX_CHUNK,
            2 * MAX_CHUNK + 7,
        ];
        let writer = tokio::spawn(async move {
            for (i, &n) in sizes.iter().enumerate() {
                let payload: Vec<u8> = (0..n).map(|j| (j % 251) as u8 ^ i as u8).collect();
                w.send(i as u8, &payload, "test").await.unwrap();
            }
        });
        for (i, &n) in sizes.iter().enumerate() {
            let p = r.read("test").await.unwrap();
            assert_eq!(p.payload.len(), n, "size {n}");
            assert!(
                p.payload
                    .iter()
                    .enumerate()
                    .all(|(j, &b)| b == (j % 251) as u8 ^ i as u8)
            );
            // The last chunk's sequence id.
            assert_eq!(p.seq, (i + n / MAX_CHUNK) as u8);
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn too_large_and_closed() {
        let (a, b) = pair().await;
        let (_ra, wa) = a.into_split();
        let (rb, _wb) = b.into_split();
        let mut w = PacketWriter::new(wa);
        let mut r = PacketReader::new(rb, 10);
        w.send(0, &[1; 10], "t").await.unwrap();
        w.send(0, &[1; 11], "t").await.unwrap();
        assert_eq!(r.read("t").await.unwrap().payload.len(), 10);
        assert!(matches!(
            r.read("t").await,
            Err(SemiSyncError::PacketTooLarge { limit: 10 })
        ));
        drop(w);
        let mut r2 = {
            let (a, b) = pair().await;
            drop(a);
            PacketReader::new(b.into_split().0, 10)
        };
        assert!(matches!(
            r2.read("t").await,
            Err(SemiSyncError::Closed { during: "t" })
        ));
    }

    #[test]
    fn lenenc() {
        let data = [
            0xFA, 0xFC, 1, 2, 0xFD, 1, 2, 3, 0xFE, 1, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut b = &data[..];
        assert_eq!(lenenc_int(&mut b), Some(0xFA));
        assert_eq!(lenenc_int(&mut b), Some(0x0201));
        assert_eq!(lenenc_int(&mut b), Some(0x030201));
        assert_eq!(lenenc_int(&mut b), Some(1));
        assert!(b.is_empty());
        let data = [0xFB, 2, b'h', b'i', 5, b'x'];
        let mut b = &data[..];
        assert_eq!(lenenc_str(&mut b).unwrap(), None);
        assert_eq!(lenenc_str(&mut b).unwrap(), Some(&b"hi"[..]));
        assert!(lenenc_str(&mut b).is_err());
    }
}
