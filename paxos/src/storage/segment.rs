//! Segment files: naming, header, creation and the verifying scan done by `open`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use super::InstanceId;
use super::error::StorageError;
use super::record::{self, PosReader};

/// `magic[8] | u32 LE version | u64 LE seq | u32 LE crc32 of the preceding 20 bytes`.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 24;
const SEGMENT_MAGIC: [u8; 8] = *b"PXSEGLOG";
const SEGMENT_VERSION: u32 = 1;
const SEGMENT_SUFFIX: &str = ".seg";
const SEQ_DIGITS: usize = 20;

/// An open segment file, shared (via `Arc`) between the writer, readers and replays.
/// Holding the handle keeps the data readable even after the file is unlinked.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub path: PathBuf,
    pub file: File,
}

/// The writer's bookkeeping for one segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub seq: u64,
    pub handle: Arc<SegmentFile>,
    /// End of the verified/written data; the next record goes here.
    pub len: u64,
    pub records: u64,
    /// Highest instance key of any record in the segment; decides removability.
    pub max_instance: Option<InstanceId>,
}

/// Where the newest record of an instance lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seq: u64,
    /// Offset of the record's first header byte.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("{seq:0width$}{SEGMENT_SUFFIX}", width = SEQ_DIGITS)
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn check_segment_header(h: &[u8; SEGMENT_HEADER_LEN as usize], seq: u64) -> Result<(), String> {
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic (not a segment file)".to_string());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&h[20..24]);
    if u32::from_le_bytes(crc) != crc32fast::hash(&h[0..20]) {
        return Err("segment header checksum mismatch".to_string());
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&h[8..12]);
    let version = u32::from_le_bytes(version);
    if version != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    let mut found = [0u8; 8];
    found.copy_from_slice(&h[12..20]);
    let found = u64::from_le_bytes(found);
    // Catches a file that was copied/renamed onto the wrong name.
    if found != seq {
        return Err(format!(
            "segment header names sequence {found}, file name says {seq}"
        ));
    }
    Ok(())
}

/// Makes directory entry changes (creates, unlinks) durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Directories cannot be opened/fsync'd portably elsewhere; NTFS journals metadata.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), StorageError> {
    Ok(())
}

/// Segment files in `dir`, sorted by sequence. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let io_err = |e| StorageError::io(dir, e);
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_file_name) {
            Some(seq) => out.push((seq, entry.path())),
            None => debug!(file = ?entry.path(), "ignoring non-segment file in log directory"),
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Creates segment `seq`: header written and fsync'd, then the directory fsync'd, so a
/// segment that exists after a crash always has a durable header (and the previous
/// segment, sealed before this is called, is complete).
pub(crate) fn create_segment(dir: &Path, seq: u64) -> Result<Segment, StorageError> {
    let path = dir.join(segment_file_name(seq));
    let io_err = |e| StorageError::io(&path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err)?;
    record::write_all_at(&file, &encode_segment_header(seq), 0).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    sync_dir(dir)?;
    debug!(file = ?path, "created log segment");
    Ok(Segment {
        seq,
        handle: Arc::new(SegmentFile { path, file }),
        len: SEGMENT_HEADER_LEN,
        records: 0,
        max_instance: None,
    })
}

/// Result of verifying one segment during `open`.
pub(crate) struct Scanned {
    pub segment: Segment,
    pub torn_cut: u64,
}

/// Verifies every record of a segment, adding keyed records to `index` (later records
/// override earlier ones, so scanning in order leaves the newest).
///
/// Damage handling: in the last segment, a bad record with no valid record anywhere
/// after it is a torn tail (an append the crash interrupted) and is cut off; anything
/// else is `Corrupt`, because skipping it would silently lose acknowledged state.
pub(crate) fn scan_segment(
    seq: u64,
    path: PathBuf,
    is_last: bool,
    max_len: u64,
    index: &mut BTreeMap<InstanceId, Loc>,
) -> Result<Scanned, StorageError> {
    let io_err = |e| StorageError::io(&path, e);
    // Only the last segment is ever written (or repaired) again.
    let file = if is_last {
        OpenOptions::new().read(true).write(true).open(&path)
    } else {
        File::open(&path)
    }
    .map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();

    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let header_check = if file_len >= SEGMENT_HEADER_LEN {
        record::read_exact_at(&file, &mut header, 0).map_err(io_err)?;
        check_segment_header(&header, seq)
    } else {
        Err(format!(
            "segment is shorter ({file_len} bytes) than its header"
        ))
    };
    if let Err(reason) = header_check {
        if !(is_last && file_len <= SEGMENT_HEADER_LEN) {
            return Err(StorageError::corrupt(&path, 0, reason));
        }
        // The newest segment holds no record bytes at all: its creation was interrupted
        // before the header was durable. Nothing can be lost by rewriting the header.
        warn!(file = ?path, bytes = file_len, %reason, "rewriting incomplete header of the last log segment");
        file.set_len(0).map_err(io_err)?;
        record::write_all_at(&file, &encode_segment_header(seq), 0).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        return Ok(Scanned {
            segment: Segment {
                seq,
                handle: Arc::new(SegmentFile { path, file }),
                len: SEGMENT_HEADER_LEN,
                records: 0,
                max_instance: None,
            },
            torn_cut: file_len,
        });
    }

    let handle = Arc::new(SegmentFile { path, file });
    let path = &handle.path;
    let mut reader = PosReader::new(Arc::clone(&handle));
    let mut pos = SEGMENT_HEADER_LEN;
    let mut records = 0u64;
    let mut max_instance: Option<InstanceId> = None;
    let mut torn_cut = 0u64;
    while pos < file_len {
        let reason = match record::read_record(&mut reader, pos, file_len, max_len, false)
            .map_err(|e| StorageError::io(path, e))?
        {
            Ok(rec) => {
                if let Some(i) = rec.instance {
                    index.insert(
                        i,
                        Loc {
                            seq,
                            offset: pos,
                            len: rec.len,
                        },
                    );
                    max_instance = max_instance.max(Some(i));
                }
                records += 1;
                pos = rec.next;
                continue;
            }
            Err(reason) => reason,
        };
        if !is_last {
            // Sealed segments were fsync'd before the next one was created, so
            // they can never legitimately end in a partial write.
            return Err(StorageError::corrupt(
                path,
                pos,
                format!("{reason} (in a sealed, non-last segment)"),
            ));
        }
        if let Some(valid) = record::find_valid_record(&mut reader, pos + 1, file_len, max_len)
            .map_err(|e| StorageError::io(path, e))?
        {
            return Err(StorageError::corrupt(
                path,
                pos,
                format!("{reason}; a valid record follows at offset {valid}"),
            ));
        }
        // Torn tail: cut back to the last good record and make the cut durable before
        // anything is appended after it.
        torn_cut = file_len - pos;
        warn!(
            file = ?path,
            offset = pos,
            bytes = torn_cut,
            %reason,
            "cutting torn tail of the log"
        );
        handle
            .file
            .set_len(pos)
            .map_err(|e| StorageError::io(path, e))?;
        handle
            .file
            .sync_all()
            .map_err(|e| StorageError::io(path, e))?;
        break;
    }
    Ok(Scanned {
        segment: Segment {
            seq,
            handle,
            len: pos,
            records,
            max_instance,
        },
        torn_cut,
    })
}

/// Removes a segment file; a file that is already gone counts as removed.
pub(crate) fn remove_segment_file(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_sort() {
        assert_eq!(segment_file_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_file_name(&segment_file_name(7)), Some(7));
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("7.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000007.tmp"), None);
    }

    #[test]
    fn header_checks() {
        let h = encode_segment_header(3);
        assert!(check_segment_header(&h, 3).is_ok());
        assert!(check_segment_header(&h, 4).is_err());
        let mut bad = h;
        bad[0] ^= 1;
        assert!(check_segment_header(&bad, 3).is_err());
        let mut bad = h;
        bad[9] ^= 1;
        assert!(check_segment_header(&bad, 3).is_err());
    }
}
