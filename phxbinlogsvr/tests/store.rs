//! The event store on real files: append, sync, reopen, read from any GTID,
//! torn tails, large transactions in parts, retention, checkpoint images.
//! Transactions are real MariaDB 10.11 event groups (binlog/tests/data) or
//! built with binlog::build.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use binlog::build::{self, EventSpec};
use binlog::{
    Assembled, Checksum, EventReader, EventType, Gtid, GtidEvent, GtidPos, QueryEvent, Transaction,
    TransactionAssembler,
};
use phxbinlogsvr::master::{SourceError, TransactionSource};
use phxbinlogsvr::store::{
    EventStore, PartOutcome, StoreError, StoreOptions, StoreReader, TxnPart,
};

const FILES: [&[u8]; 3] = [
    include_bytes!("../../binlog/tests/data/fx-bin.000001"),
    include_bytes!("../../binlog/tests/data/fx-bin.000002"),
    include_bytes!("../../binlog/tests/data/fx-bin.000003"),
];

/// The 19 transactions of the fixture binlogs (0-1-1 .. 0-1-18 and 2-1-1;
/// the last one without event checksums).
fn fixtures() -> Vec<Transaction> {
    let mut out = Vec::new();
    for file in FILES {
        let mut asm = TransactionAssembler::new(Checksum::Crc32);
        for ev in EventReader::binlog_file(file).unwrap() {
            if let Some(Assembled::Transaction(t)) = asm.push(ev.unwrap().raw()).unwrap() {
                out.push(t);
            }
        }
    }
    assert_eq!(out.len(), 19);
    out
}

/// GTID, a QUERY of `pad` bytes, XID: a normal group.
fn synth(domain: u32, server: u32, seq: u64, pad: usize) -> Transaction {
    let spec = EventSpec {
        timestamp: 1,
        event_type: EventType::UNKNOWN,
        server_id: server,
        log_pos: 0,
        flags: 0,
    };
    let c = Checksum::Crc32;
    let mut bytes =
        build::gtid_event(&spec, &GtidEvent::new(Gtid::new(domain, server, seq), 0), c).unwrap();
    let text = format!("INSERT INTO t VALUES ({seq}, '{}')", "x".repeat(pad));
    let q = QueryEvent {
        thread_id: 1,
        exec_time: 0,
        error_code: 0,
        status_vars: &[],
        db: b"fx",
        query: text.as_bytes(),
    };
    bytes.extend(build::query_event(&spec, &q, c).unwrap());
    bytes.extend(build::xid_event(&spec, seq, c).unwrap());
    Transaction::from_bytes(&bytes, c).unwrap()
}

/// The rolling checksum as documented: crc32 over (previous, GTID, bytes).
fn chain(prev: u32, t: &Transaction) -> u32 {
    let g = t.gtid();
    let mut h = crc32fast::Hasher::new();
    h.update(&prev.to_le_bytes());
    h.update(&g.domain.to_le_bytes());
    h.update(&g.server.to_le_bytes());
    h.update(&g.seq.to_le_bytes());
    h.update(t.bytes());
    h.finalize()
}

fn chain_all(txns: &[Transaction]) -> u32 {
    txns.iter().fold(0, chain)
}

fn pos_of(txns: &[Transaction]) -> GtidPos {
    GtidPos::from_gtids(txns.iter().map(Transaction::gtid))
}

fn open(dir: &Path) -> EventStore {
    open_with(dir, StoreOptions::default())
}

fn open_with(dir: &Path, opts: StoreOptions) -> EventStore {
    EventStore::open(dir, opts).unwrap().0
}

fn small_segments() -> StoreOptions {
    StoreOptions {
        segment_bytes: 4096,
        ..StoreOptions::default()
    }
}

/// Every durable transaction, in order: (index, bytes).
fn read_all(r: &StoreReader) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = r.first_index();
    loop {
        let batch = r.read_from_blocking(next, 10_000).unwrap();
        if batch.is_empty() {
            return out;
        }
        for e in batch {
            assert_eq!(e.index, next);
            next += 1;
            out.push((e.index, e.transaction.bytes().to_vec()));
        }
    }
}

fn bytes_of(txns: &[Transaction]) -> Vec<Vec<u8>> {
    txns.iter().map(|t| t.bytes().to_vec()).collect()
}

fn just_bytes(v: Vec<(u64, Vec<u8>)>) -> Vec<Vec<u8>> {
    v.into_iter().map(|(_, b)| b).collect()
}

/// What a dump with connect state `state` would send: from `start_after`,
/// skipping what the state contains.
fn dump(r: &StoreReader, state: &GtidPos) -> Result<Vec<Vec<u8>>, SourceError> {
    let start = r.start_after(state, true)?;
    let mut out = Vec::new();
    let mut next = start;
    loop {
        let batch = r.read_from_blocking(next, 1 << 20)?;
        if batch.is_empty() {
            return Ok(out);
        }
        for e in batch {
            next = e.index + 1;
            if !state.contains(&e.transaction.gtid()) {
                out.push(e.transaction.bytes().to_vec());
            }
        }
    }
}

fn gen_dir(dir: &Path) -> PathBuf {
    let current = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
    let n: u64 = current.trim().parse().unwrap();
    dir.join(format!("gen-{n:020}"))
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(gen_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn append_sync_reopen_and_read_from_any_gtid() {
    let tmp = tempfile::tempdir().unwrap();
    let txns = fixtures();
    let (mut store, report) = EventStore::open(tmp.path(), StoreOptions::default()).unwrap();
    assert_eq!(report.end_index, 0);
    assert_eq!(store.checkpoint(), 0);
    assert_eq!(store.rolling_checksum(), 0);

    // Instances 0..: batches of 1-4 transactions, one lease-only instance.
    let mut instance = 0;
    let mut i = 0;
    for size in [3, 1, 4, 1, 5, 2, 3] {
        let range = store.append(instance, &txns[i..i + size]).unwrap();
        assert_eq!(range, i as u64..(i + size) as u64);
        i += size;
        instance += 1;
        if instance == 3 {
            store.mark_applied(instance).unwrap();
            instance += 1;
        }
    }
    assert_eq!(i, txns.len());
    // Written, not yet durable: the write path's view moves, readers' not.
    assert_eq!(store.last_pos(), &pos_of(&txns));
    assert_eq!(store.rolling_checksum(), chain_all(&txns));
    assert!(store.contains(&Gtid::new(2, 1, 1)));
    assert_eq!(store.checkpoint(), 0);
    assert_eq!(store.reader().end_index(), 0);
    store.sync().unwrap();
    assert_eq!(store.checkpoint(), instance);
    assert_eq!(store.reader().end_index(), 19);
    assert_eq!(just_bytes(read_all(&store.reader())), bytes_of(&txns));

    // A refused call stores nothing.
    let err = store.append(instance, &[synth(0, 1, 18, 0)]).unwrap_err();
    assert!(
        matches!(err, StoreError::OutOfOrder { domain: 0, .. }),
        "{err}"
    );
    let err = store
        .append(instance - 1, &[synth(0, 1, 19, 0)])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InstanceOutOfOrder { .. }),
        "{err}"
    );
    assert_eq!(store.end_index(), 19);

    let (pos, sum, cp) = (
        store.last_pos().clone(),
        store.rolling_checksum(),
        store.checkpoint(),
    );
    drop(store);
    let (store, report) = EventStore::open(tmp.path(), StoreOptions::default()).unwrap();
    assert_eq!(report.discarded_records, 0);
    assert_eq!(report.torn_tail_bytes_cut, 0);
    assert_eq!((report.first_index, report.end_index), (0, 19));
    assert_eq!(store.last_pos(), &pos);
    assert_eq!(store.rolling_checksum(), sum);
    assert_eq!(store.checkpoint(), cp);
    let r = store.reader();
    assert_eq!(r.gtid_pos(), pos);
    assert_eq!(just_bytes(read_all(&r)), bytes_of(&txns));

    // From every GTID: exactly the later transactions.
    for k in 0..txns.len() {
        let state = pos_of(&txns[..=k]);
        let got = dump(&r, &state).unwrap();
        assert_eq!(got, bytes_of(&txns[k + 1..]), "after {}", txns[k].gtid());
    }
    assert_eq!(dump(&r, &GtidPos::new()).unwrap(), bytes_of(&txns));
    // A GTID the log never had (diverged replica).
    assert!(matches!(
        dump(&r, &"0-9-5,2-1-1".parse().unwrap()),
        Err(SourceError::NotInLog { .. })
    ));
    // The stored transactions keep their checksum setting (the last one has
    // none).
    let last = r.read_from_blocking(18, 1).unwrap();
    assert_eq!(last[0].transaction.checksum(), Checksum::None);
}

#[tokio::test]
async fn a_waiting_reader_wakes_on_sync_not_before() {
    let tmp = tempfile::tempdir().unwrap();
    let txns = fixtures();
    let mut store = open(tmp.path());
    store.append(0, &txns[..2]).unwrap();
    store.sync().unwrap();
    let reader = store.reader();
    let mut rx = reader.subscribe();
    assert_eq!(*rx.borrow_and_update(), 2);

    let waiter = {
        let reader = reader.clone();
        let mut rx = rx.clone();
        tokio::spawn(async move {
            rx.changed().await.unwrap();
            reader.read_from(2, 1 << 20).await.unwrap()
        })
    };
    store.append(1, &txns[2..4]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "woke before the sync");
    assert!(!rx.has_changed().unwrap());
    assert!(reader.read_from(2, 1 << 20).await.unwrap().is_empty());
    assert_eq!(reader.end_index(), 2);

    store.mark_applied(2).unwrap();
    store.sync().unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("reader woken by the sync")
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].index, 2);
    assert_eq!(got[1].transaction.bytes(), txns[3].bytes());
    assert_eq!(*rx.borrow_and_update(), 4);
    // A sync with nothing new wakes no one.
    store.sync().unwrap();
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn torn_tail_after_a_crash_recovers_a_prefix_of_whole_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let txns = fixtures();
    // (instance, transactions) in order; every instance synced.
    let batches: Vec<(u64, std::ops::Range<usize>)> = vec![
        (0, 0..2),
        (1, 2..3),
        (2, 3..6),
        (4, 6..7),
        (5, 7..10),
        (6, 10..11),
        (7, 11..15),
        (8, 15..19),
    ];
    {
        let mut store = open(&pristine);
        for (instance, r) in &batches {
            store.append(*instance, &txns[r.clone()]).unwrap();
            store.sync().unwrap();
        }
    }
    let last_seg = segment_files(&pristine).pop().unwrap();
    let full = std::fs::metadata(&last_seg).unwrap().len();
    let seg_name = last_seg.file_name().unwrap().to_owned();
    let gen_name = gen_dir(&pristine).file_name().unwrap().to_owned();

    let mut seen_prefixes = std::collections::BTreeSet::new();
    let mut discards = 0;
    let mut cut = 24; // the segment header
    while cut <= full {
        let dir = tmp.path().join(format!("cut-{cut}"));
        copy_dir(&pristine, &dir);
        let seg = dir.join(&gen_name).join(&seg_name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (store, report) = EventStore::open(&dir, StoreOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let n = report.end_index as usize;
        discards += usize::from(report.discarded_records > 0);
        // A prefix of whole instances: the checkpoint is right after the
        // last instance kept.
        let kept = batches.iter().filter(|(_, r)| r.end <= n).count();
        assert_eq!(
            batches.get(kept.wrapping_sub(1)).map_or(0, |(_, r)| r.end),
            n,
            "cut at {cut}: {n} transactions is not a whole-instance prefix"
        );
        let expected_cp = batches.get(kept.wrapping_sub(1)).map_or(0, |(i, _)| i + 1);
        assert_eq!(store.checkpoint(), expected_cp, "cut at {cut}");
        assert_eq!(store.last_pos(), &pos_of(&txns[..n]));
        assert_eq!(store.rolling_checksum(), chain_all(&txns[..n]));
        assert_eq!(just_bytes(read_all(&store.reader())), bytes_of(&txns[..n]));
        seen_prefixes.insert(n);
        drop(store);
        // Paxos applies the lost instances again from the checkpoint: same
        // result as without the crash, also after another restart.
        let mut store = open(&dir);
        for (instance, r) in batches.iter().skip(kept) {
            store.append(*instance, &txns[r.clone()]).unwrap();
        }
        store.sync().unwrap();
        drop(store);
        let mut store = open(&dir);
        assert_eq!(store.rolling_checksum(), chain_all(&txns), "cut at {cut}");
        assert_eq!(just_bytes(read_all(&store.reader())), bytes_of(&txns));
        // The log now holds the cut instance's leftovers (keys reused by
        // its second application): an image of it is still exact.
        let mut copy = open(&dir.join("copy"));
        transfer(&mut store, &mut copy, 4096);
        assert_same(&store, &copy);
        drop((store, copy));
        std::fs::remove_dir_all(&dir).unwrap();
        cut += if cut + 211 > full && cut < full {
            full - cut
        } else {
            211
        };
    }
    // The cuts hit several instance boundaries, the last one included.
    assert!(seen_prefixes.len() >= 5, "{seen_prefixes:?}");
    assert!(seen_prefixes.contains(&19));
    // Some cuts fell inside an instance of several records.
    assert!(discards > 0);
}

/// Splits `t` into `n` parts of about equal size.
fn split(t: &Transaction, n: usize) -> Vec<Vec<u8>> {
    let b = t.bytes();
    let size = b.len().div_ceil(n);
    b.chunks(size).map(<[u8]>::to_vec).collect()
}

fn part<'a>(t: &Transaction, parts: &'a [Vec<u8>], i: usize) -> TxnPart<'a> {
    TxnPart {
        gtid: t.gtid(),
        index: i as u32,
        last: i + 1 == parts.len(),
        checksum: t.checksum(),
        bytes: &parts[i],
    }
}

#[test]
fn a_transaction_in_parts_appears_only_when_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let txns = fixtures();
    let big = &txns[5]; // 0-1-6: a 20 KB row
    assert_eq!(big.gtid(), Gtid::new(0, 1, 6));
    // Too large for one record here: it must come in parts.
    let opts = StoreOptions {
        max_record_bytes: 8 << 10,
        ..StoreOptions::default()
    };
    let mut store = open_with(tmp.path(), opts.clone());
    store.append(0, &txns[..5]).unwrap();
    store.sync().unwrap();
    let err = store.append(1, &txns[5..6]).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");

    let parts = split(big, 5);
    assert_eq!(parts.len(), 5);
    let reader = store.reader();
    let mut rx = reader.subscribe();
    rx.borrow_and_update();
    for i in 0..4 {
        let out = store
            .append_part(1 + i as u64, part(big, &parts, i))
            .unwrap();
        assert_eq!(
            out,
            PartOutcome::Pending {
                parts: i as u32 + 1
            }
        );
        store.sync().unwrap();
        assert_eq!(reader.end_index(), 5, "visible after part {i}");
        assert!(!rx.has_changed().unwrap());
        assert!(!store.contains(&big.gtid()));
        assert_eq!(store.checkpoint(), 2 + i as u64);
        assert_eq!(store.pending_part(), Some((big.gtid(), i as u32 + 1)));
        // Out of order parts are refused and change nothing.
        let mut wrong = part(big, &parts, i);
        wrong.index += 2;
        wrong.last = false;
        assert!(matches!(
            store.append_part(10, wrong),
            Err(StoreError::PartOutOfOrder { .. })
        ));
    }
    let out = store.append_part(5, part(big, &parts, 4)).unwrap();
    assert_eq!(out, PartOutcome::Complete { index: 5 });
    assert_eq!(reader.end_index(), 5, "visible before the sync");
    store.sync().unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(store.pending_part(), None);
    let got = reader.read_from_blocking(5, 1).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].transaction.bytes(), big.bytes());
    store.append(6, &txns[6..8]).unwrap();
    store.sync().unwrap();

    // Same position and checksum as a store that got it whole.
    let other = tmp.path().join("whole");
    let mut whole = open(&other);
    whole.append(0, &txns[..8]).unwrap();
    whole.sync().unwrap();
    assert_eq!(store.rolling_checksum(), whole.rolling_checksum());
    assert_eq!(store.last_pos(), whole.last_pos());

    drop(store);
    let store = open_with(tmp.path(), opts);
    assert_eq!(just_bytes(read_all(&store.reader())), bytes_of(&txns[..8]));
    assert_eq!(store.rolling_checksum(), chain_all(&txns[..8]));
}

#[test]
fn a_crash_after_three_parts_leaves_it_invisible_until_completed() {
    let tmp = tempfile::tempdir().unwrap();
    let txns = fixtures();
    let big = &txns[5];
    let parts = split(big, 5);
    {
        let mut store = open(tmp.path());
        store.append(0, &txns[..5]).unwrap();
        for i in 0..3 {
            store
                .append_part(1 + i as u64, part(big, &parts, i))
                .unwrap();
        }
        store.sync().unwrap();
        // Part 3 is written but never synced, and the process dies: here
        // the page cache keeps it (a machine crash may not).
        store.append_part(4, part(big, &parts, 3)).unwrap();
    }
    {
        let (store, report) = EventStore::open(tmp.path(), StoreOptions::default()).unwrap();
        assert_eq!(report.pending_part, Some((big.gtid(), 4)));
        assert_eq!(store.checkpoint(), 5);
        drop(store);
    }

    // A machine crash: three parts synced, the fourth one torn.
    let dir = tmp.path().join("torn");
    {
        let mut store = open(&dir);
        store.append(0, &txns[..5]).unwrap();
        for i in 0..3 {
            store
                .append_part(1 + i as u64, part(big, &parts, i))
                .unwrap();
        }
        store.sync().unwrap();
        store.append_part(4, part(big, &parts, 3)).unwrap();
        store.sync().unwrap();
    }
    let seg = segment_files(&dir).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let (mut store, report) = EventStore::open(&dir, StoreOptions::default()).unwrap();
    assert!(report.torn_tail_bytes_cut > 0);
    assert_eq!(report.pending_part, Some((big.gtid(), 3)));
    assert_eq!(store.checkpoint(), 4);
    assert_eq!(store.reader().end_index(), 5);
    assert!(!store.contains(&big.gtid()));
    assert_eq!(store.rolling_checksum(), chain_all(&txns[..5]));
    assert_eq!(
        dump(&store.reader(), &pos_of(&txns[..5])).unwrap(),
        Vec::<Vec<u8>>::new()
    );

    // Paxos applies instances 4 and 5 again: the transaction completes.
    store.append_part(4, part(big, &parts, 3)).unwrap();
    assert_eq!(
        store.append_part(5, part(big, &parts, 4)).unwrap(),
        PartOutcome::Complete { index: 5 }
    );
    store.sync().unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.pending_part(), None);
    assert_eq!(just_bytes(read_all(&store.reader())), bytes_of(&txns[..6]));
    assert_eq!(store.rolling_checksum(), chain_all(&txns[..6]));
}

#[test]
fn parts_are_abandoned_when_the_log_moves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let txns = fixtures();
    let big = &txns[5];
    let parts = split(big, 5);
    {
        let mut store = open(tmp.path());
        store.append(0, &txns[..5]).unwrap();
        for i in 0..3 {
            store
                .append_part(1 + i as u64, part(big, &parts, i))
                .unwrap();
        }
        store.sync().unwrap();
    }
    // The master died; the new one's transaction takes seq_no 6.
    let replacement = synth(0, 2, 6, 10);
    let mut store = open(tmp.path());
    assert_eq!(store.pending_part(), Some((big.gtid(), 3)));
    // The dead master's later parts can no longer come...
    store.append(4, std::slice::from_ref(&replacement)).unwrap();
    assert_eq!(store.pending_part(), None);
    assert!(matches!(
        store.append_part(5, part(big, &parts, 3)),
        Err(StoreError::PartOutOfOrder { .. })
    ));
    store.mark_applied(5).unwrap();
    store.sync().unwrap();
    drop(store);
    let store = open(tmp.path());
    assert_eq!(store.pending_part(), None);
    assert!(!store.contains(&big.gtid()));
    assert!(store.contains(&replacement.gtid()));
    assert_eq!(store.checkpoint(), 6);
    let mut expected = txns[..5].to_vec();
    expected.push(replacement);
    assert_eq!(just_bytes(read_all(&store.reader())), bytes_of(&expected));
    assert_eq!(store.rolling_checksum(), chain_all(&expected));
}

/// 200 transactions of ~500 bytes in domain 0, one per instance, in 4 KiB
/// segments.
fn filled_store(dir: &Path) -> (EventStore, Vec<Transaction>) {
    let mut store = open_with(dir, small_segments());
    let txns: Vec<Transaction> = (1..=200).map(|s| synth(0, 1, s, 400)).collect();
    for (i, t) in txns.iter().enumerate() {
        store.append(i as u64, std::slice::from_ref(t)).unwrap();
        if i % 10 == 9 {
            store.sync().unwrap();
        }
    }
    store.sync().unwrap();
    (store, txns)
}

#[test]
fn retention_removes_old_segments_and_keeps_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, txns) = filled_store(tmp.path());
    let files_before = segment_files(tmp.path()).len();
    assert!(files_before > 20, "{files_before}");
    assert_eq!(store.segment_count(), files_before);

    // The local MariaDB has applied nothing: no transaction goes (the
    // empty first segment of a new store may).
    let r = store.trim(&GtidPos::new(), 0).unwrap();
    assert!(r.removed_segments <= 1);
    assert_eq!(r.first_index, 0);
    assert_eq!(read_all(&store.reader()).len(), 200);
    let files_before = segment_files(tmp.path()).len();
    // It has applied up to 0-1-50: only what is below it may go.
    let applied: GtidPos = "0-1-50".parse().unwrap();
    let r = store.trim(&applied, 10).unwrap();
    assert!(r.removed_segments > 0);
    assert!(r.first_index > 0 && r.first_index <= 50, "{r:?}");
    assert_eq!(store.first_index(), r.first_index);
    assert_eq!(
        r.trimmed,
        pos_of(&txns[..r.first_index as usize]),
        "trimmed position"
    );
    assert_eq!(
        segment_files(tmp.path()).len(),
        files_before - r.removed_segments
    );
    let reader = store.reader();
    let held = just_bytes(read_all(&reader));
    assert_eq!(held, bytes_of(&txns[r.first_index as usize..]));
    // The replica at 0-1-50 is served; one at 0-1-10 gets an error naming
    // its GTID.
    assert_eq!(dump(&reader, &applied).unwrap(), bytes_of(&txns[50..]));
    let err = dump(&reader, &"0-1-10".parse().unwrap()).unwrap_err();
    assert!(
        matches!(err, SourceError::Trimmed { domain: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0-1-10"), "{err}");
    let err = reader.read_from_blocking(0, 1).unwrap_err();
    assert!(matches!(err, SourceError::IndexTrimmed { .. }), "{err}");

    // Everything applied: the window decides.
    let r = store.trim(&"0-1-200".parse().unwrap(), 30).unwrap();
    let held = store.end_index() - r.first_index;
    assert!(held >= 30, "kept {held}");
    assert!(held < 30 + 20, "kept {held}: a whole segment more at most");
    // The replica must be at least at the trimmed boundary.
    let boundary = r.trimmed.clone();
    assert_eq!(
        dump(&reader, &boundary).unwrap(),
        bytes_of(&txns[r.first_index as usize..])
    );

    // The same after a restart; and appending goes on.
    let (pos, sum, cp) = (
        store.last_pos().clone(),
        store.rolling_checksum(),
        store.checkpoint(),
    );
    drop(store);
    let mut store = open_with(tmp.path(), small_segments());
    assert_eq!(store.first_index(), r.first_index);
    assert_eq!(store.trimmed_pos(), r.trimmed);
    assert_eq!(
        (
            store.last_pos(),
            store.rolling_checksum(),
            store.checkpoint()
        ),
        (&pos, sum, cp)
    );
    assert_eq!(
        just_bytes(read_all(&store.reader())),
        bytes_of(&txns[r.first_index as usize..])
    );
    store.append(cp, &[synth(0, 1, 201, 0)]).unwrap();
    store.sync().unwrap();
    assert_eq!(store.reader().end_index(), 201);
}

/// Copies `src`'s current image into `dst` the way the Paxos drivers do.
fn transfer(src: &mut EventStore, dst: &mut EventStore, chunk: usize) -> (u64, u64) {
    let mut offset = 0;
    loop {
        let c = src.read_checkpoint(offset, chunk).unwrap();
        assert!(!c.data.is_empty() || c.done);
        dst.write_checkpoint(c.checkpoint, offset, &c.data, c.done)
            .unwrap();
        offset += c.data.len() as u64;
        if c.done {
            return (c.checkpoint, offset);
        }
    }
}

fn assert_same(a: &EventStore, b: &EventStore) {
    assert_eq!(a.last_pos(), b.last_pos());
    assert_eq!(a.rolling_checksum(), b.rolling_checksum());
    assert_eq!(a.checkpoint(), b.checkpoint());
    assert_eq!(a.first_index(), b.first_index());
    assert_eq!(a.end_index(), b.end_index());
    assert_eq!(a.trimmed_pos(), b.trimmed_pos());
    assert_eq!(a.pending_part(), b.pending_part());
    assert_eq!(read_all(&a.reader()), read_all(&b.reader()));
}

#[test]
fn a_checkpoint_image_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut src, mut txns) = filled_store(&tmp.path().join("src"));
    src.trim(&"0-1-120".parse().unwrap(), 50).unwrap();
    assert!(src.first_index() > 0);
    // A second domain, a restart (an extra segment), and a transaction
    // half received in parts.
    let extra: Vec<Transaction> = (1..=3).map(|s| synth(7, 3, s, 50)).collect();
    src.append(200, &extra).unwrap();
    src.sync().unwrap();
    txns.extend(extra);
    drop(src);
    let mut src = open_with(&tmp.path().join("src"), small_segments());
    let big = synth(0, 1, 201, 9000);
    let parts = split(&big, 5);
    for i in 0..3 {
        src.append_part(201 + i as u64, part(&big, &parts, i))
            .unwrap();
    }
    src.mark_applied(210).unwrap();
    src.sync().unwrap();
    assert_eq!(src.checkpoint(), 211);

    // The receiver holds something else (it will be replaced).
    let dst_dir = tmp.path().join("dst");
    let mut dst = open(&dst_dir);
    dst.append(0, &fixtures()[..3]).unwrap();
    dst.sync().unwrap();
    let dst_reader = dst.reader();
    let mut rx = dst_reader.subscribe();
    rx.borrow_and_update();

    let (checkpoint, bytes) = transfer(&mut src, &mut dst, 1000);
    assert_eq!(checkpoint, 211);
    assert!(bytes > 10_000);
    assert_same(&src, &dst);
    assert_eq!(dst.generation(), 1);
    // Readers made before the install see the new content, and were woken.
    assert!(rx.has_changed().unwrap());
    assert_eq!(dst_reader.end_index(), src.end_index());
    assert_eq!(
        dump(&dst_reader, &pos_of(&txns[150..160])).unwrap(),
        bytes_of(&txns[160..])
    );
    assert!(matches!(
        dump(&dst_reader, &"0-1-1".parse().unwrap()),
        Err(SourceError::Trimmed { .. })
    ));

    // Both go on the same way: the parts complete on each.
    for store in [&mut src, &mut dst] {
        store.append_part(211, part(&big, &parts, 3)).unwrap();
        store.append_part(212, part(&big, &parts, 4)).unwrap();
        store.sync().unwrap();
    }
    assert_same(&src, &dst);
    txns.push(big);
    assert_eq!(src.rolling_checksum(), chain_all(&txns));
    drop(dst);
    let (dst, report) = EventStore::open(&dst_dir, StoreOptions::default()).unwrap();
    assert_eq!(report.generation, 1);
    assert_same(&src, &dst);
    // Only the current generation is left.
    let names: Vec<String> = std::fs::read_dir(&dst_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn an_image_is_stable_while_the_store_moves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut src, _) = filled_store(&tmp.path().join("src"));
    let snapshot = tmp.path().join("snapshot");
    copy_dir(&tmp.path().join("src"), &snapshot);

    let mut reader = src.checkpoint_reader().unwrap();
    let checkpoint = reader.checkpoint();
    let mut chunks = vec![reader.next_chunk(5000).unwrap()];
    // The source appends, syncs and trims during the transfer.
    for s in 201..260 {
        src.append(s - 1, &[synth(0, 1, s, 400)]).unwrap();
        src.sync().unwrap();
    }
    src.trim(&"0-1-250".parse().unwrap(), 5).unwrap();
    while !chunks.last().unwrap().done {
        let c = reader.next_chunk(5000).unwrap();
        assert_eq!(c.checkpoint, checkpoint);
        chunks.push(c);
    }
    let mut dst = open(&tmp.path().join("dst"));
    dst.install_checkpoint(checkpoint, chunks.iter().map(|c| &c.data))
        .unwrap();
    // Equal to the source as it was when the image started.
    let before = open_with(&snapshot, small_segments());
    assert_same(&before, &dst);

    // read_checkpoint: a repeated offset is served again while the store
    // has not moved; once it moved, the transfer must start over.
    let first = src.read_checkpoint(0, 100).unwrap();
    let again = src.read_checkpoint(0, 100).unwrap();
    assert_eq!(first, again);
    let next = src.read_checkpoint(100, 100).unwrap();
    assert_eq!(src.read_checkpoint(100, 100).unwrap(), next);
    src.append(src.next_instance(), &[synth(0, 1, 400, 0)])
        .unwrap();
    src.sync().unwrap();
    assert!(src.read_checkpoint(100, 100).is_err());
    assert!(src.read_checkpoint(0, 100).unwrap().checkpoint > first.checkpoint);
}

#[test]
fn a_bad_or_interrupted_image_leaves_the_store_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, _) = filled_store(&tmp.path().join("src"));
    let mut chunks = Vec::new();
    let mut reader = src.checkpoint_reader().unwrap();
    loop {
        let c = reader.next_chunk(3000).unwrap();
        chunks.push(c.data);
        if c.done {
            break;
        }
    }
    let checkpoint = reader.checkpoint();
    let dst_dir = tmp.path().join("dst");
    let mut dst = open(&dst_dir);
    let txns = fixtures();
    dst.append(0, &txns[..4]).unwrap();
    dst.sync().unwrap();

    // A flipped byte anywhere is refused.
    for at in [5usize, 40, 3000, 20_000, 60_000] {
        let mut bad = chunks.concat();
        if at >= bad.len() {
            continue;
        }
        bad[at] ^= 0x20;
        let err = dst.install_checkpoint(checkpoint, [&bad]).unwrap_err();
        assert!(matches!(err, StoreError::Image(_)), "byte {at}: {err}");
        assert_eq!(dst.end_index(), 4);
    }
    // A truncated image, or the wrong checkpoint id.
    let all = chunks.concat();
    assert!(
        dst.install_checkpoint(checkpoint, [&all[..all.len() - 1]])
            .is_err()
    );
    assert!(dst.install_checkpoint(checkpoint + 1, [&all]).is_err());
    // Chunks out of order.
    dst.write_checkpoint(checkpoint, 0, &chunks[0], false)
        .unwrap();
    assert!(
        dst.write_checkpoint(checkpoint, 5, &chunks[1], false)
            .is_err()
    );
    // A transfer abandoned half-way (the process dies).
    dst.write_checkpoint(checkpoint, 0, &chunks[0], false)
        .unwrap();
    dst.write_checkpoint(checkpoint, chunks[0].len() as u64, &chunks[1], false)
        .unwrap();
    std::mem::forget(dst);
    let (dst, _) = EventStore::open(&dst_dir, StoreOptions::default()).unwrap();
    assert_eq!(just_bytes(read_all(&dst.reader())), bytes_of(&txns[..4]));
    assert_eq!(dst.generation(), 0);
    let names: Vec<String> = std::fs::read_dir(&dst_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "staging left behind: {names:?}");
}

#[test]
fn trimming_through_a_transaction_split_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = open_with(dir, small_segments());
    let mut txns: Vec<Transaction> = (1..=20).map(|s| synth(0, 1, s, 400)).collect();
    for (i, t) in txns.iter().enumerate() {
        store.append(i as u64, std::slice::from_ref(t)).unwrap();
    }
    // Four 2000-byte parts and a small last one: the 4 KiB segments roll
    // between the first four, and the last segment holds part 3, part 4
    // and the transactions after it.
    let big = synth(0, 1, 21, 8100);
    let parts: Vec<Vec<u8>> = big.bytes().chunks(2000).map(<[u8]>::to_vec).collect();
    assert_eq!(parts.len(), 5);
    let segs_before = store.segment_count();
    for i in 0..5 {
        store
            .append_part(20 + i as u64, part(&big, &parts, i))
            .unwrap();
    }
    assert!(store.segment_count() >= segs_before + 2);
    txns.push(big.clone());
    let segs_with_big = store.segment_count();
    let after: Vec<Transaction> = (22..=24).map(|s| synth(0, 1, s, 10)).collect();
    store.append(25, &after).unwrap();
    assert_eq!(store.segment_count(), segs_with_big);
    txns.extend(after);
    store.sync().unwrap();

    // Everything up to the big one applied, no window: the segments that
    // hold only its first parts go, and with them the transaction.
    let r = store.trim(&"0-1-21".parse().unwrap(), 0).unwrap();
    assert!(r.removed_segments > 0);
    assert_eq!(r.first_index, 21, "{r:?}");
    assert_eq!(r.trimmed, "0-1-21".parse().unwrap());
    let reader = store.reader();
    assert_eq!(just_bytes(read_all(&reader)), bytes_of(&txns[21..]));
    assert_eq!(
        dump(&reader, &"0-1-21".parse().unwrap()).unwrap(),
        bytes_of(&txns[21..])
    );
    assert!(matches!(
        dump(&reader, &"0-1-20".parse().unwrap()),
        Err(SourceError::Trimmed { .. })
    ));

    // A restart finds the same start (the orphan parts count as trimmed),
    // and so does a node that installs this store's image.
    let sum = store.rolling_checksum();
    assert_eq!(sum, chain_all(&txns));
    drop(store);
    let (mut store, report) = EventStore::open(dir, small_segments()).unwrap();
    assert_eq!(report.first_index, 21);
    assert!(report.orphan_parts > 0);
    assert_eq!(store.trimmed_pos(), "0-1-21".parse().unwrap());
    assert_eq!(store.rolling_checksum(), sum);
    assert_eq!(just_bytes(read_all(&store.reader())), bytes_of(&txns[21..]));
    let mut dst = open(&tmp.path().join("dst"));
    transfer(&mut store, &mut dst, 777);
    assert_same(&store, &dst);
}

#[test]
fn a_store_without_current_is_only_recreated_when_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A crash during creation, before CURRENT was written (here: right
    // after its generation directory was made), and a staging directory
    // left by an interrupted install.
    std::fs::create_dir_all(dir.join(format!("gen-{:020}", 0))).unwrap();
    std::fs::create_dir_all(dir.join(format!("staging-{:020}", 1))).unwrap();
    let (mut store, report) = EventStore::open(dir, StoreOptions::default()).unwrap();
    assert_eq!(report.end_index, 0);
    assert!(!dir.join(format!("staging-{:020}", 1)).exists());
    store.append(0, &fixtures()[..1]).unwrap();
    store.sync().unwrap();
    drop(store);
    // Someone removed CURRENT from a store that holds data: refused, and
    // nothing deleted.
    std::fs::remove_file(dir.join("CURRENT")).unwrap();
    let err = EventStore::open(dir, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    std::fs::write(dir.join("CURRENT"), "0\n").unwrap();
    assert_eq!(open(dir).end_index(), 1);
}

#[test]
fn the_store_goes_to_other_threads() {
    fn send<T: Send + 'static>() {}
    fn shared<T: Send + Sync + 'static>() {}
    // The Paxos state machine (on the driver thread) owns the store; the
    // replication master's connections share readers.
    send::<EventStore>();
    send::<phxbinlogsvr::store::CheckpointReader>();
    send::<phxbinlogsvr::store::CheckpointWriter>();
    shared::<StoreReader>();
}
