//! Record framing (see the module docs of `storage` for the layout), record
//! validation, and a small buffered positional reader.
//!
//! Everything here treats bytes read from disk as untrusted: lengths are
//! checked against the data actually present and against the configured
//! maximum *before* anything is allocated or read.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::segment::SegmentFile;

/// `u32 len | u8 flags | u64 instance`.
pub(crate) const HEADER_LEN: u64 = 13;
/// `u32 crc`.
pub(crate) const TRAILER_LEN: u64 = 4;
/// Bytes a record occupies on top of its payload.
pub(crate) const OVERHEAD: u64 = HEADER_LEN + TRAILER_LEN;

/// Flags bit 0: the record carries an instance key.
const FLAG_HAS_INSTANCE: u8 = 0x01;
/// Every other flag bit must be zero; a set bit means damage (or a newer format).
const KNOWN_FLAGS: u8 = FLAG_HAS_INSTANCE;

/// Size of the read-ahead buffer used when scanning/replaying.
const READ_BUF: usize = 64 * 1024;
/// Chunk size used to checksum a payload without holding all of it in memory.
const CRC_CHUNK: usize = 32 * 1024;

/// Encodes the 13-byte record header.
pub(crate) fn encode_header(instance: Option<u64>, len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    if let Some(i) = instance {
        h[4] = FLAG_HAS_INSTANCE;
        h[5..13].copy_from_slice(&i.to_le_bytes());
    }
    h
}

/// CRC stored in the trailer: crc32 over the header (len, flags, instance) and the payload,
/// i.e. over every byte of the record that precedes the trailer.
pub(crate) fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

/// A parsed, plausibility-checked header (the CRC is not checked yet).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub len: u32,
    pub instance: Option<u64>,
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Parses a header. Rejects unknown flag bits and a non-zero instance field on an
/// unkeyed record: the writer never produces either, so they indicate damage, and
/// rejecting them early makes garbage much less likely to look like a record.
pub(crate) fn parse_header(raw: &[u8; HEADER_LEN as usize]) -> Result<Header, String> {
    let len = le_u32(&raw[0..4]);
    let flags = raw[4];
    let instance = le_u64(&raw[5..13]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown flag bits {flags:#04x}"));
    }
    let instance = if flags & FLAG_HAS_INSTANCE != 0 {
        Some(instance)
    } else if instance != 0 {
        return Err("unkeyed record has a non-zero instance field".to_string());
    } else {
        None
    };
    Ok(Header { len, instance })
}

/// Verifies a whole in-memory record (header + payload + trailer) and returns its header.
pub(crate) fn verify_record_bytes(buf: &[u8]) -> Result<Header, String> {
    let Some((head, rest)) = buf.split_first_chunk::<{ HEADER_LEN as usize }>() else {
        return Err("record shorter than its header".to_string());
    };
    let header = parse_header(head)?;
    let len = header.len as usize;
    if rest.len() != len + TRAILER_LEN as usize {
        return Err(format!(
            "record length {} does not match the {} bytes read",
            header.len,
            rest.len()
        ));
    }
    let (payload, trailer) = rest.split_at(len);
    let stored = le_u32(trailer);
    let computed = record_crc(head, payload);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(header)
}

/// `pread` that fills `buf` completely or fails (`UnexpectedEof` at end of file).
pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file ended before the expected data",
                ));
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `pwrite` of the whole buffer. Positional, so it does not depend on (or move) a
/// shared file cursor that concurrent readers might also use.
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match write_at(file, buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write the whole record",
                ));
            }
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

// On Windows seek_read/seek_write move the cursor, which is harmless here: every
// access in this module is positional.
#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, offset)
}

#[cfg(not(any(unix, windows)))]
fn read_at(_file: &File, _buf: &mut [u8], _offset: u64) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "positional reads are not supported on this platform",
    ))
}

#[cfg(not(any(unix, windows)))]
fn write_at(_file: &File, _buf: &[u8], _offset: u64) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "positional writes are not supported on this platform",
    ))
}

/// Positional reader with a read-ahead buffer, so scanning many small records costs
/// one syscall per 64 KiB instead of three per record. Owns a handle to the segment
/// so it keeps working even after the segment file has been unlinked.
pub(crate) struct PosReader {
    seg: Arc<SegmentFile>,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    /// Valid bytes in `buf`.
    filled: usize,
}

impl PosReader {
    pub(crate) fn new(seg: Arc<SegmentFile>) -> Self {
        PosReader {
            seg,
            buf: vec![0u8; READ_BUF],
            start: 0,
            filled: 0,
        }
    }

    pub(crate) fn segment(&self) -> &Arc<SegmentFile> {
        &self.seg
    }

    /// Fills `out` with the bytes at `pos`. Callers only ask for ranges they have
    /// already checked to lie inside the file.
    pub(crate) fn read_exact_at(&mut self, pos: u64, out: &mut [u8]) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let want = out.len() as u64;
        if pos >= self.start && pos + want <= self.start + self.filled as u64 {
            let from = (pos - self.start) as usize;
            out.copy_from_slice(&self.buf[from..from + out.len()]);
            return Ok(());
        }
        if out.len() >= self.buf.len() {
            return read_exact_at(&self.seg.file, out, pos);
        }
        // Refill from `pos`: read at least what was asked for, more if available.
        self.start = pos;
        self.filled = 0;
        while self.filled < out.len() {
            let off = self.start + self.filled as u64;
            match read_at(&self.seg.file, &mut self.buf[self.filled..], off) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the expected data",
                    ));
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.filled = 0;
                    return Err(e);
                }
            }
        }
        out.copy_from_slice(&self.buf[..out.len()]);
        Ok(())
    }
}

/// A record that passed every check.
#[derive(Debug)]
pub(crate) struct ValidRecord {
    pub instance: Option<u64>,
    pub len: u32,
    /// Offset just past this record's trailer.
    pub next: u64,
    /// The payload, if it was asked for (empty otherwise).
    pub payload: Vec<u8>,
}

/// Reads and verifies the record at `pos`, where `end` is the end of the data that may
/// belong to records. The outer `io::Result` is an I/O failure; the inner `Err` is the
/// reason the bytes at `pos` are not a valid record.
///
/// With `keep_payload == false` the payload is checksummed in chunks and never held in
/// memory as a whole (used by `open`, which only needs locations).
pub(crate) fn read_record(
    r: &mut PosReader,
    pos: u64,
    end: u64,
    max_len: u64,
    keep_payload: bool,
) -> io::Result<Result<ValidRecord, String>> {
    let avail = end.saturating_sub(pos);
    if avail < HEADER_LEN {
        return Ok(Err(format!(
            "incomplete record header ({avail} of {HEADER_LEN} bytes)"
        )));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    r.read_exact_at(pos, &mut raw)?;
    let header = match parse_header(&raw) {
        Ok(h) => h,
        Err(reason) => return Ok(Err(reason)),
    };
    let len = u64::from(header.len);
    // Both checks come before any allocation: a damaged length field must never
    // turn into a huge allocation or a read past the data.
    if len > max_len {
        return Ok(Err(format!(
            "length field {len} exceeds the maximum record size {max_len}"
        )));
    }
    let total = OVERHEAD + len;
    if total > avail {
        return Ok(Err(format!(
            "record of {total} bytes runs past the end of the data ({avail} bytes left)"
        )));
    }

    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&raw);
    let payload_pos = pos + HEADER_LEN;
    let mut payload = Vec::new();
    if keep_payload {
        // `len` fits in usize: it is bounded by the bytes present in the file.
        payload = vec![0u8; header.len as usize];
        r.read_exact_at(payload_pos, &mut payload)?;
        hasher.update(&payload);
    } else {
        let mut chunk = vec![0u8; (header.len as usize).min(CRC_CHUNK)];
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(chunk.len());
            r.read_exact_at(payload_pos + done, &mut chunk[..n])?;
            hasher.update(&chunk[..n]);
            done += n as u64;
        }
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    r.read_exact_at(payload_pos + len, &mut trailer)?;
    let stored = u32::from_le_bytes(trailer);
    let computed = hasher.finalize();
    if stored != computed {
        return Ok(Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    Ok(Ok(ValidRecord {
        instance: header.instance,
        len: header.len,
        next: pos + total,
        payload,
    }))
}

/// Looks for any offset in `from..end` at which a complete, checksum-valid record
/// starts. Used to tell a torn tail (nothing valid after the bad bytes) from damage
/// in the middle of the log (valid data after the bad bytes).
pub(crate) fn find_valid_record(
    r: &mut PosReader,
    from: u64,
    end: u64,
    max_len: u64,
) -> io::Result<Option<u64>> {
    let mut q = from;
    while q + OVERHEAD <= end {
        if read_record(r, q, end, max_len, false)?.is_ok() {
            return Ok(Some(q));
        }
        q += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(instance: Option<u64>, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let h = encode_header(instance, len);
        let mut v = h.to_vec();
        v.extend_from_slice(payload);
        v.extend_from_slice(&record_crc(&h, payload).to_le_bytes());
        v
    }

    #[test]
    fn roundtrip_and_damage() {
        let rec = encode(Some(42), b"hello");
        let h = verify_record_bytes(&rec).map_err(|e| e.to_string());
        assert!(matches!(
            h,
            Ok(Header {
                len: 5,
                instance: Some(42)
            })
        ));
        let rec = encode(None, b"");
        assert!(matches!(
            verify_record_bytes(&rec),
            Ok(Header {
                len: 0,
                instance: None
            })
        ));
        let good = encode(Some(7), b"abc");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(verify_record_bytes(&bad).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn header_rejects_unknown_flags_and_stray_instance() {
        let mut h = encode_header(None, 3);
        h[4] = 0x80;
        assert!(parse_header(&h).is_err());
        let mut h = encode_header(None, 3);
        h[6] = 1;
        assert!(parse_header(&h).is_err());
    }
}
