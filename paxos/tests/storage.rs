//! Integration tests of the durable segment log.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use paxos::storage::{
    LogOptions, RECORD_OVERHEAD_BYTES, RecoveryReport, SEGMENT_HEADER_BYTES, SegmentLog,
    StorageError,
};

type Records = Vec<(Option<u64>, Vec<u8>)>;

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        ..LogOptions::default()
    }
}

fn open(dir: &Path, o: LogOptions) -> (SegmentLog, RecoveryReport) {
    match SegmentLog::open(dir, o) {
        Ok(v) => v,
        Err(e) => panic!("open failed: {e}"),
    }
}

fn replay_all(log: &SegmentLog) -> Records {
    log.replay()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn payload(i: u64) -> Vec<u8> {
    format!("payload-{i:04}").into_bytes()
}

/// Writes `n` keyed, equally sized records (instance i, payload(i)) and syncs.
fn write_records(log: &mut SegmentLog, range: std::ops::Range<u64>) -> Records {
    let mut out = Vec::new();
    for i in range {
        log.append(Some(i), &payload(i)).unwrap();
        out.push((Some(i), payload(i)));
    }
    log.sync().unwrap();
    out
}

/// On-disk offset of the k-th record of a segment holding only `payload(_)` records.
fn offset_of(k: u64) -> u64 {
    SEGMENT_HEADER_BYTES + k * (RECORD_OVERHEAD_BYTES + payload(0).len() as u64)
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn append_bytes(path: &Path, extra: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(extra).unwrap();
    f.sync_all().unwrap();
}

fn expect_corrupt(dir: &Path, o: LogOptions) -> (PathBuf, u64, String) {
    match SegmentLog::open(dir, o) {
        Err(StorageError::Corrupt {
            path,
            offset,
            reason,
        }) => (path, offset, reason),
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("expected Corrupt, open succeeded"),
    }
}

#[test]
fn clean_reopen_keeps_records_in_order_and_newest_per_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut log, report) = open(&dir, LogOptions::default());
    assert_eq!(report, RecoveryReport::default());
    assert_eq!(log.first_instance(), None);
    assert_eq!(log.dir(), dir.as_path());

    log.append(Some(5), b"five-v1").unwrap();
    log.append(None, b"unkeyed").unwrap();
    log.append(Some(3), b"three").unwrap();
    log.append(Some(9), b"nine").unwrap();
    log.append(Some(5), b"five-v2").unwrap();
    log.append(Some(7), b"").unwrap();
    log.sync().unwrap();
    log.sync().unwrap(); // no-op
    let expected: Records = vec![
        (Some(5), b"five-v1".to_vec()),
        (None, b"unkeyed".to_vec()),
        (Some(3), b"three".to_vec()),
        (Some(9), b"nine".to_vec()),
        (Some(5), b"five-v2".to_vec()),
        (Some(7), Vec::new()),
    ];
    assert_eq!(replay_all(&log), expected);
    drop(log);

    let (log, report) = open(&dir, LogOptions::default());
    assert_eq!(
        report,
        RecoveryReport {
            segments: 1,
            records: 6,
            torn_tail_bytes_cut: 0
        }
    );
    assert_eq!(replay_all(&log), expected);
    let r = log.reader();
    assert_eq!(r.read(5).unwrap().as_deref(), Some(&b"five-v2"[..]));
    assert_eq!(r.read(3).unwrap().as_deref(), Some(&b"three"[..]));
    assert_eq!(r.read(7).unwrap(), Some(Vec::new()));
    assert_eq!(r.read(4).unwrap(), None);
    assert_eq!(log.first_instance(), Some(3));
    assert_eq!(log.last_instance(), Some(9));
    assert_eq!(r.first_instance(), Some(3));
    assert_eq!(r.last_instance(), Some(9));
}

#[test]
fn newest_payload_wins_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    log.append(Some(1), b"old").unwrap();
    log.roll().unwrap();
    log.append(Some(1), b"new").unwrap();
    log.sync().unwrap();
    assert_eq!(seg_files(tmp.path()).len(), 2);
    drop(log);
    let (log, report) = open(tmp.path(), LogOptions::default());
    assert_eq!(report.segments, 2);
    assert_eq!(log.reader().read(1).unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn torn_tail_mid_record_is_cut_and_log_stays_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    let mut expected = write_records(&mut log, 0..10);
    drop(log);

    let seg = &seg_files(tmp.path())[0];
    let full = fs::metadata(seg).unwrap().len();
    assert_eq!(full, offset_of(10));
    // Cut 5 bytes off the last record: 9 complete records remain.
    let cut_to = full - 5;
    OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(cut_to)
        .unwrap();

    let (mut log, report) = open(tmp.path(), LogOptions::default());
    assert_eq!(report.records, 9);
    assert_eq!(report.torn_tail_bytes_cut, cut_to - offset_of(9));
    assert!(report.torn_tail_bytes_cut > 0);
    assert_eq!(fs::metadata(seg).unwrap().len(), offset_of(9));
    expected.pop();
    assert_eq!(replay_all(&log), expected);
    assert_eq!(log.reader().read(9).unwrap(), None);
    assert_eq!(log.last_instance(), Some(8));

    expected.extend(write_records(&mut log, 100..103));
    drop(log);
    let (log, report) = open(tmp.path(), LogOptions::default());
    assert_eq!(report.torn_tail_bytes_cut, 0);
    assert_eq!(report.records, 12);
    assert_eq!(replay_all(&log), expected);
    assert_eq!(log.reader().read(101).unwrap(), Some(payload(101)));
}

#[test]
fn torn_tail_garbage_or_half_header_is_cut() {
    // (garbage appended after the last complete record, expected cut)
    let half_header: Vec<u8> = {
        let mut v = 20u32.to_le_bytes().to_vec();
        v.push(1);
        v.extend_from_slice(&[7, 0]); // 7 of the 13 header bytes
        v
    };
    let cases: Vec<Vec<u8>> = vec![vec![0xAB; 11], half_header, vec![0u8; 300]];
    for extra in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = open(tmp.path(), LogOptions::default());
        let mut expected = write_records(&mut log, 0..5);
        drop(log);
        let seg = &seg_files(tmp.path())[0];
        append_bytes(seg, &extra);

        let (mut log, report) = open(tmp.path(), LogOptions::default());
        assert_eq!(report.torn_tail_bytes_cut, extra.len() as u64, "{extra:?}");
        assert_eq!(report.records, 5);
        assert_eq!(replay_all(&log), expected);

        expected.extend(write_records(&mut log, 5..8));
        drop(log);
        let (log, report) = open(tmp.path(), LogOptions::default());
        assert_eq!(report.torn_tail_bytes_cut, 0);
        assert_eq!(replay_all(&log), expected);
        assert_eq!(log.last_instance(), Some(7));
    }
}

#[test]
fn torn_tail_with_huge_length_field_is_cut_without_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    let expected = write_records(&mut log, 0..3);
    drop(log);
    let seg = &seg_files(tmp.path())[0];
    let mut header = (u32::MAX - 3).to_le_bytes().to_vec();
    header.push(1);
    header.extend_from_slice(&42u64.to_le_bytes());
    header.extend_from_slice(b"partial payload");
    append_bytes(seg, &header);

    let (log, report) = open(tmp.path(), LogOptions::default());
    assert_eq!(report.torn_tail_bytes_cut, header.len() as u64);
    assert_eq!(replay_all(&log), expected);
}

#[test]
fn checksum_failure_in_the_last_record_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    let mut expected = write_records(&mut log, 0..4);
    drop(log);
    let seg = &seg_files(tmp.path())[0];
    flip_byte(seg, offset_of(3) + 15); // inside the last record's payload
    let (log, report) = open(tmp.path(), LogOptions::default());
    assert_eq!(report.torn_tail_bytes_cut, offset_of(4) - offset_of(3));
    expected.pop();
    assert_eq!(replay_all(&log), expected);
}

#[test]
fn corrupt_payload_in_the_middle_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    write_records(&mut log, 0..10);
    drop(log);
    let seg = seg_files(tmp.path())[0].clone();
    let before = fs::read(&seg).unwrap();
    flip_byte(&seg, offset_of(2) + 16); // payload of record 2
    let damaged = fs::read(&seg).unwrap();
    assert_ne!(before, damaged);

    let (path, offset, reason) = expect_corrupt(tmp.path(), LogOptions::default());
    assert_eq!(path, seg);
    assert_eq!(offset, offset_of(2));
    assert!(reason.contains("checksum"), "{reason}");
    // Nothing was "repaired": the damaged file is untouched.
    assert_eq!(fs::read(&seg).unwrap(), damaged);
    // And it keeps failing.
    expect_corrupt(tmp.path(), LogOptions::default());
}

#[test]
fn corrupt_length_field_in_the_middle_is_an_error_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    write_records(&mut log, 0..10);
    drop(log);
    let seg = seg_files(tmp.path())[0].clone();
    let len = fs::metadata(&seg).unwrap().len();
    flip_byte(&seg, offset_of(4) + 3); // top byte of record 4's length: huge length
    let (path, offset, _) = expect_corrupt(tmp.path(), LogOptions::default());
    assert_eq!(path, seg);
    assert_eq!(offset, offset_of(4));
    assert_eq!(fs::metadata(&seg).unwrap().len(), len, "must not truncate");
}

#[test]
fn damage_in_a_non_last_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    write_records(&mut log, 0..3);
    log.roll().unwrap();
    write_records(&mut log, 3..6);
    drop(log);
    let segs = seg_files(tmp.path());
    assert_eq!(segs.len(), 2);

    // Damage the last record of the first segment: nothing valid follows it in that
    // file, but it is sealed, so this is corruption, not a torn tail.
    flip_byte(&segs[0], offset_of(2) + 14);
    let (path, offset, _) = expect_corrupt(tmp.path(), LogOptions::default());
    assert_eq!(path, segs[0]);
    assert_eq!(offset, offset_of(2));
    flip_byte(&segs[0], offset_of(2) + 14); // undo
    open(tmp.path(), LogOptions::default());

    // A truncated sealed segment is corruption too.
    let len = fs::metadata(&segs[0]).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .unwrap()
        .set_len(len - 2)
        .unwrap();
    let (path, offset, _) = expect_corrupt(tmp.path(), LogOptions::default());
    assert_eq!(path, segs[0]);
    assert_eq!(offset, offset_of(2));
}

#[test]
fn bad_segment_header_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    write_records(&mut log, 0..3);
    drop(log);
    let seg = seg_files(tmp.path())[0].clone();
    flip_byte(&seg, 2);
    let (path, offset, _) = expect_corrupt(tmp.path(), LogOptions::default());
    assert_eq!((path, offset), (seg, 0));
}

#[test]
fn interrupted_segment_creation_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    let mut expected = write_records(&mut log, 0..3);
    drop(log);
    // A crash right after creating the next segment, before its header was written.
    let next = tmp.path().join(format!("{:020}.seg", 1));
    fs::write(&next, b"PXSE").unwrap();

    let (mut log, report) = open(tmp.path(), LogOptions::default());
    assert_eq!(report.segments, 2);
    assert_eq!(report.torn_tail_bytes_cut, 4);
    expected.extend(write_records(&mut log, 3..5));
    drop(log);
    let (log, report) = open(tmp.path(), LogOptions::default());
    assert_eq!(report.torn_tail_bytes_cut, 0);
    assert_eq!(replay_all(&log), expected);
}

#[test]
fn rolling_and_removing_old_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(200);
    let (mut log, _) = open(tmp.path(), o.clone());
    let expected = write_records(&mut log, 0..60);
    let segs = seg_files(tmp.path());
    assert!(segs.len() >= 5, "only {} segments", segs.len());
    for s in &segs[..segs.len() - 1] {
        assert!(fs::metadata(s).unwrap().len() <= 200);
    }
    assert_eq!(replay_all(&log), expected);

    let reader = log.reader();
    let removed = log.remove_segments_below(30).unwrap();
    assert!(removed > 0);
    let left = seg_files(tmp.path());
    assert_eq!(left.len(), segs.len() - removed);
    // The active segment is never removed.
    assert_eq!(left.last(), segs.last());
    // Everything >= 30 is still there; everything below is gone from the index.
    for i in 30..60 {
        assert_eq!(reader.read(i).unwrap(), Some(payload(i)), "instance {i}");
    }
    for i in 0..30 {
        assert_eq!(reader.read(i).unwrap(), None, "instance {i}");
    }
    assert_eq!(log.first_instance(), Some(30));
    assert_eq!(reader.first_instance(), Some(30));
    assert_eq!(log.last_instance(), Some(59));
    // The segment holding 30 was kept even if it also holds smaller instances: the
    // replay is a suffix of the original log that starts at or before 30.
    let after = replay_all(&log);
    assert_eq!(after[..], expected[expected.len() - after.len()..]);
    assert!(after.len() >= 30);
    assert!(after.len() < 60);

    // Removing again is a no-op.
    assert_eq!(log.remove_segments_below(30).unwrap(), 0);
    // The active segment survives even when everything is below the watermark.
    log.remove_segments_below(1000).unwrap();
    assert_eq!(seg_files(tmp.path()), vec![segs.last().unwrap().clone()]);
    log.append(Some(60), &payload(60)).unwrap();
    log.sync().unwrap();
    let files = seg_files(tmp.path()).len();
    drop(log);

    let (log, report) = open(tmp.path(), o);
    assert_eq!(report.segments, files);
    let all = replay_all(&log);
    assert_eq!(all.last(), Some(&(Some(60), payload(60))));
    assert_eq!(log.reader().read(59).unwrap(), Some(payload(59)));
    assert_eq!(log.last_instance(), Some(60));
}

#[test]
fn reopen_after_remove_is_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(200);
    let (mut log, _) = open(tmp.path(), o.clone());
    let expected = write_records(&mut log, 0..40);
    log.remove_segments_below(20).unwrap();
    let kept = replay_all(&log);
    drop(log);
    let (log, report) = open(tmp.path(), o);
    assert_eq!(report.records, kept.len() as u64);
    assert_eq!(replay_all(&log), kept);
    assert_eq!(kept[..], expected[expected.len() - kept.len()..]);
    for i in 20..40 {
        assert_eq!(log.reader().read(i).unwrap(), Some(payload(i)));
    }
}

#[test]
fn segments_with_a_high_instance_or_only_unkeyed_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    log.append(None, b"unkeyed only").unwrap(); // segment 0: removable
    log.roll().unwrap();
    log.append(Some(1), b"low").unwrap(); // segment 1: holds 100 => kept
    log.append(Some(100), b"high").unwrap();
    log.roll().unwrap();
    log.append(Some(2), b"low again").unwrap(); // segment 2: removable
    log.roll().unwrap();
    log.append(None, b"active").unwrap(); // segment 3: active
    log.sync().unwrap();
    let segs = seg_files(tmp.path());
    assert_eq!(segs.len(), 4);

    assert_eq!(log.remove_segments_below(50).unwrap(), 2);
    assert_eq!(
        seg_files(tmp.path()),
        vec![segs[1].clone(), segs[3].clone()]
    );
    assert_eq!(
        log.reader().read(100).unwrap().as_deref(),
        Some(&b"high"[..])
    );
    assert_eq!(log.reader().read(2).unwrap(), None);
    // Instance 1 lives in a kept segment: it stays readable.
    assert_eq!(log.reader().read(1).unwrap().as_deref(), Some(&b"low"[..]));
    assert_eq!(log.first_instance(), Some(1));
    assert_eq!(
        replay_all(&log),
        vec![
            (Some(1), b"low".to_vec()),
            (Some(100), b"high".to_vec()),
            (None, b"active".to_vec()),
        ]
    );
}

#[test]
fn replay_in_progress_survives_segment_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), opts(200));
    let expected = write_records(&mut log, 0..30);
    let replay = log.replay().unwrap();
    log.remove_segments_below(25).unwrap();
    let got = replay.collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(got, expected);
}

#[test]
fn reset_empties_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), opts(200));
    write_records(&mut log, 0..30);
    let reader = log.reader();
    log.reset().unwrap();
    assert_eq!(seg_files(tmp.path()).len(), 1);
    assert_eq!(replay_all(&log), Vec::new());
    assert_eq!(log.first_instance(), None);
    assert_eq!(log.last_instance(), None);
    assert_eq!(reader.read(5).unwrap(), None);
    assert_eq!(reader.last_instance(), None);

    let expected = write_records(&mut log, 1000..1003);
    drop(log);
    let (log, report) = open(tmp.path(), opts(200));
    assert_eq!(report.records, 3);
    assert_eq!(replay_all(&log), expected);
    assert_eq!(log.first_instance(), Some(1000));
    assert_eq!(log.reader().read(5).unwrap(), None);
}

#[test]
fn reader_sees_appends_made_after_it_was_cloned() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), opts(200));
    let reader = log.reader();
    let clone = reader.clone();
    assert_eq!(clone.read(1).unwrap(), None);

    // Unsynced appends are visible too, across segment rolls.
    for i in 0..20 {
        log.append(Some(i), &payload(i)).unwrap();
    }
    assert_eq!(clone.read(1).unwrap(), Some(payload(1)));
    assert_eq!(clone.last_instance(), Some(19));

    let handle = std::thread::spawn(move || clone.read(19).map_err(|e| e.to_string()));
    assert_eq!(handle.join().unwrap().unwrap(), Some(payload(19)));

    log.append(Some(1), b"overwritten").unwrap();
    assert_eq!(
        reader.read(1).unwrap().as_deref(),
        Some(&b"overwritten"[..])
    );
}

#[test]
fn oversized_records_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let o = LogOptions {
        max_record_bytes: 8,
        ..LogOptions::default()
    };
    let (mut log, _) = open(tmp.path(), o.clone());
    let err = log.append(Some(1), &[0u8; 9]).unwrap_err();
    assert!(matches!(
        err,
        StorageError::RecordTooLarge { len: 9, max: 8 }
    ));
    log.append(Some(1), &[1u8; 8]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = open(tmp.path(), o);
    assert_eq!(log.reader().read(1).unwrap(), Some(vec![1u8; 8]));
}

#[test]
fn log_types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<paxos::storage::LogReader>();
    assert_send_sync::<SegmentLog>();
    assert_send_sync::<StorageError>();
}

#[test]
fn header_written_after_roll_survives_removing_everything_below_max() {
    // A checkpoint install: roll, rewrite the slots to keep, then drop all older
    // segments. The rewritten records must stay readable.
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), LogOptions::default());
    for i in 0..10 {
        log.append(Some(i), &payload(i)).unwrap();
    }
    log.roll().unwrap();
    log.append(Some(7), b"kept seven").unwrap();
    log.append(Some(12), b"twelve").unwrap();
    log.sync().unwrap();
    assert_eq!(log.remove_segments_below(u64::MAX).unwrap(), 1);
    assert_eq!(log.reader().read(3).unwrap(), None);
    assert_eq!(
        log.reader().read(7).unwrap().as_deref(),
        Some(&b"kept seven"[..])
    );
    assert_eq!(
        log.reader().read(12).unwrap().as_deref(),
        Some(&b"twelve"[..])
    );
    drop(log);
    let (log, _) = open(tmp.path(), LogOptions::default());
    assert_eq!(
        log.reader().read(7).unwrap().as_deref(),
        Some(&b"kept seven"[..])
    );
    assert_eq!(log.first_instance(), Some(7));
}
