//! Tests against real binlog files written by mariadbd 10.11 (see
//! tests/data/README.md and tests/data/make-fixtures.sh).

use binlog::build::{self, FormatDescriptionSpec};
use binlog::{
    Assembled, Checksum, Event, EventReader, EventType, GroupEnd, Gtid, GtidEvent, GtidPos,
    MARIADB_10_11_POST_HEADER_LENGTHS, Restamper, Transaction, TransactionAssembler,
};

const FILES: [(&str, &[u8]); 3] = [
    ("fx-bin.000001", include_bytes!("data/fx-bin.000001")),
    ("fx-bin.000002", include_bytes!("data/fx-bin.000002")),
    ("fx-bin.000003", include_bytes!("data/fx-bin.000003")),
];

fn events(file: &[u8]) -> Vec<Event<'_>> {
    EventReader::binlog_file(file)
        .expect("fixture file")
        .collect::<Result<Vec<_>, _>>()
        .expect("fixture events")
}

/// (GTID, event count, how it ended, standalone) for every group the
/// fixture script creates, in binlog order.
fn expected() -> Vec<(Gtid, usize, GroupEnd, bool)> {
    use GroupEnd::*;
    let g = |d, s| Gtid::new(d, 1, s);
    vec![
        (g(0, 1), 2, Statement, true),   // CREATE DATABASE
        (g(0, 2), 2, Statement, true),   // CREATE TABLE fx.t
        (g(0, 3), 2, Statement, true),   // CREATE TABLE fx.m (MyISAM)
        (g(0, 4), 5, Xid, false),        // autocommit INSERT
        (g(0, 5), 11, Xid, false),       // INSERT, UPDATE, DELETE
        (g(0, 6), 5, Xid, false),        // big row
        (g(0, 7), 5, Commit, false),     // MyISAM insert
        (g(0, 8), 5, Commit, false),     // MyISAM part of a rolled back trx
        (g(0, 9), 6, XaPrepare, false),  // XA PREPARE 'fxa'
        (g(0, 10), 2, XaCommit, true),   // XA COMMIT 'fxa'
        (g(0, 11), 6, XaPrepare, false), // XA PREPARE 'fxb'
        (g(0, 12), 2, XaRollback, true), // XA ROLLBACK 'fxb'
        (g(0, 13), 5, Xid, false),       // XA COMMIT 'fxc' ONE PHASE
        (g(0, 14), 9, Xid, false),       // savepoints
        (g(0, 15), 6, Xid, false),       // CREATE TABLE ... SELECT
        (g(2, 1), 5, Xid, false),        // domain 2
        (g(0, 16), 5, Xid, false),       // file 2: UPDATE
        (g(0, 17), 2, Statement, true),  // file 2: DROP TABLE
        (g(0, 18), 5, Xid, false),       // file 3 (no checksums): INSERT
    ]
}

#[test]
fn every_event_verifies_and_positions_match_offsets() {
    for (name, file) in FILES {
        let mut rd = EventReader::binlog_file(file).unwrap();
        let mut n = 0;
        while let Some(ev) = rd.next() {
            let ev = ev.unwrap_or_else(|e| panic!("{name}: {e}"));
            // In a binlog file, log_pos is the end offset of the event.
            assert_eq!(ev.log_pos() as usize, rd.offset(), "{name} event {n}");
            ev.verify_checksum().unwrap();
            n += 1;
        }
        assert_eq!(rd.offset(), file.len(), "{name}: trailing bytes");
        let first = events(file)[0];
        assert_eq!(first.event_type(), EventType::FORMAT_DESCRIPTION);
        first
            .format_description()
            .unwrap()
            .check_supported()
            .unwrap();
    }
}

#[test]
fn checksum_settings_of_the_files() {
    let crc: Vec<Checksum> = FILES.iter().map(|(_, f)| events(f)[0].checksum()).collect();
    assert_eq!(crc, [Checksum::Crc32, Checksum::Crc32, Checksum::None]);
    for ev in events(FILES[0].1) {
        assert!(ev.stored_crc().is_some());
    }
    for ev in events(FILES[2].1).iter().skip(1) {
        assert_eq!(ev.stored_crc(), None);
    }
}

#[test]
fn mariadb_10_11_facts() {
    let all: Vec<Event<'_>> = FILES.iter().flat_map(|(_, f)| events(f)).collect();
    let has = |t: EventType| all.iter().any(|e| e.event_type() == t);
    // ROW format writes v1 row events, never v2 or compressed ones.
    assert!(has(EventType::WRITE_ROWS_V1));
    assert!(has(EventType::UPDATE_ROWS_V1));
    assert!(has(EventType::DELETE_ROWS_V1));
    assert!(!all.iter().any(|e| {
        let t = e.event_type();
        t.is_rows() && !matches!(t.0, 23..=25)
    }));
    // binlog_annotate_row_events is on by default: ANNOTATE_ROWS precedes
    // the TABLE_MAP of every row statement.
    assert!(has(EventType::ANNOTATE_ROWS));
    for w in all.windows(2) {
        if w[1].event_type() == EventType::ANNOTATE_ROWS {
            assert!(matches!(
                w[0].event_type(),
                EventType::GTID
                    | EventType::XID
                    | EventType::QUERY
                    | EventType::WRITE_ROWS_V1
                    | EventType::UPDATE_ROWS_V1
                    | EventType::DELETE_ROWS_V1
            ));
        }
    }
    // No BEGIN query after a GTID event: the GTID event is the BEGIN.
    assert!(!all.iter().any(|e| e.query().is_ok_and(|q| q.is_begin())));
    // Every file starts FDE, GTID_LIST, BINLOG_CHECKPOINT.
    for (_, f) in FILES {
        let ev = events(f);
        assert_eq!(ev[1].event_type(), EventType::GTID_LIST);
        assert_eq!(ev[2].event_type(), EventType::BINLOG_CHECKPOINT);
    }
    // A file closed by rotation ends with ROTATE; the last one with STOP.
    assert_eq!(
        events(FILES[0].1).last().unwrap().event_type(),
        EventType::ROTATE
    );
    assert_eq!(
        events(FILES[2].1).last().unwrap().event_type(),
        EventType::STOP
    );
    // GTID events have a 19-byte body unless XA. FL_DDL does not mean
    // standalone: CREATE TABLE ... SELECT is DDL inside a normal group.
    let mut ddl = Vec::new();
    for e in &all {
        if let Ok(g) = e.gtid() {
            if g.xid.is_none() {
                assert_eq!(e.body().len(), 19);
            }
            if g.flags2 & GtidEvent::FL_DDL != 0 {
                ddl.push((g.seq_no, g.is_standalone()));
            }
        }
    }
    assert_eq!(
        ddl,
        [(1, true), (2, true), (3, true), (15, false), (17, true)]
    );
    // The GTID_LIST of each file is the binlog state before it.
    let gl = |i: usize| GtidPos::from_gtids(events(FILES[i].1)[1].gtid_list().unwrap().gtids);
    assert!(gl(0).is_empty());
    assert_eq!(gl(1).to_string(), "0-1-15,2-1-1");
    assert_eq!(gl(2).to_string(), "0-1-17,2-1-1");
}

fn assemble_all() -> (Vec<Transaction>, Vec<EventType>) {
    let mut asm = TransactionAssembler::new(Checksum::Crc32);
    asm.set_binlog_file(FILES[0].0);
    let mut trxs = Vec::new();
    let mut others = Vec::new();
    for (_, file) in FILES {
        for ev in events(file) {
            match asm.push(ev.raw()).expect("assemble fixture") {
                Some(Assembled::Transaction(t)) => trxs.push(t),
                Some(Assembled::Other(e)) => others.push(e.event_type()),
                None => {}
            }
        }
    }
    assert_eq!(asm.pending_gtid(), None);
    (trxs, others)
}

#[test]
fn assembler_yields_exactly_the_created_transactions() {
    let (trxs, others) = assemble_all();
    let got: Vec<(Gtid, usize, GroupEnd, bool)> = trxs
        .iter()
        .map(|t| (t.gtid(), t.event_count(), t.end(), t.is_standalone()))
        .collect();
    assert_eq!(got, expected());
    // Control events only: never a group event.
    assert!(others.iter().all(|t| !t.is_group_event()));
    assert!(others.contains(&EventType::STOP));

    // Files, positions and sizes.
    let files: Vec<&str> = trxs.iter().map(|t| t.binlog_file()).collect();
    assert!(files[..16].iter().all(|f| *f == "fx-bin.000001"));
    assert_eq!(
        &files[16..],
        ["fx-bin.000002", "fx-bin.000002", "fx-bin.000003"]
    );
    let first = &trxs[0];
    assert_eq!(first.start_log_pos(), Some(325));
    assert_eq!(first.end_log_pos(), 450);
    assert_eq!(first.size(), 450 - 325);
    let big = &trxs[5];
    assert!(big.size() > 20_000);
    assert_eq!(
        big.end_log_pos(),
        big.start_log_pos().unwrap() + big.size() as u32
    );
    for t in &trxs {
        assert_eq!(
            t.start_log_pos().unwrap() as usize + t.size(),
            t.end_log_pos() as usize
        );
        // Stored bytes read back into the same transaction.
        let back = Transaction::from_bytes(t.bytes(), t.checksum()).unwrap();
        assert_eq!((back.gtid(), back.end()), (t.gtid(), t.end()));
        assert_eq!(back.bytes(), t.bytes());
    }
    // The GTID position after everything.
    let mut pos = GtidPos::new();
    for t in &trxs {
        pos.advance(t.gtid()).unwrap();
    }
    assert_eq!(pos.to_string(), "0-1-18,2-1-1");
}

#[test]
fn restamped_virtual_file_stays_valid() {
    let (trxs, _) = assemble_all();
    // Serve the CRC32 transactions as one continuous virtual file, as the
    // binlog server does: magic, artificial ROTATE (not part of the file),
    // FDE at 4, then every transaction re-stamped.
    let crc_trxs: Vec<&Transaction> = trxs
        .iter()
        .filter(|t| t.checksum() == Checksum::Crc32)
        .collect();
    assert_eq!(crc_trxs.len(), 18);
    let mut file = binlog::BINLOG_MAGIC.to_vec();
    let fde = build::format_description(&FormatDescriptionSpec {
        server_version: "10.11.19-MariaDB-phx",
        timestamp: 0,
        create_timestamp: 0,
        server_id: 99,
        log_pos: 0,
        flags: 0,
        checksum: Checksum::Crc32,
    })
    .unwrap();
    let mut r = Restamper::new(4, Checksum::Crc32);
    r.append(&fde, &mut file).unwrap();
    for t in &crc_trxs {
        t.restamp_into(&mut r, &mut file).unwrap();
    }
    assert_eq!(r.position() as usize, file.len());

    // Every event verifies, positions are continuous, and the GTIDs and
    // bodies are the original ones.
    let mut rd = EventReader::binlog_file(&file).unwrap();
    let mut asm = TransactionAssembler::new(Checksum::Crc32);
    let mut again = Vec::new();
    while let Some(ev) = rd.next() {
        let ev = ev.unwrap();
        assert_eq!(ev.log_pos() as usize, rd.offset());
        if let Some(Assembled::Transaction(t)) = asm.push(ev.raw()).unwrap() {
            again.push(t);
        }
    }
    assert_eq!(again.len(), crc_trxs.len());
    for (a, b) in again.iter().zip(&crc_trxs) {
        assert_eq!(a.gtid(), b.gtid());
        assert_eq!(a.gtid_event(), b.gtid_event());
        assert_eq!(a.end(), b.end());
        assert_eq!(a.size(), b.size());
        for (ea, eb) in a.events().zip(b.events()) {
            assert_eq!(ea.body(), eb.body());
            assert_eq!(ea.header().server_id, eb.header().server_id);
            assert_eq!(ea.header().timestamp, eb.header().timestamp);
            assert_eq!(ea.event_type(), eb.event_type());
        }
    }
    // Positions moved: the first transaction now starts right after our FDE.
    assert_eq!(again[0].start_log_pos(), Some(4 + 252));
}

#[test]
fn every_event_restamps_in_place() {
    for (name, file) in FILES {
        for ev in events(file) {
            for pos in [0u32, 4, 12345, u32::MAX] {
                let out = ev.restamped(pos, None).unwrap();
                let e = Event::parse(&out, ev.checksum()).unwrap();
                assert_eq!(e.log_pos(), pos, "{name}");
                assert_eq!(e.body(), ev.body());
                assert_eq!(&out[..13], &ev.raw()[..13]);
            }
        }
    }
}

#[test]
fn fde_builder_matches_the_real_table() {
    for (_, file) in FILES {
        let ev = events(file)[0];
        let real = ev.format_description().unwrap();
        assert_eq!(
            real.post_header_lengths,
            &MARIADB_10_11_POST_HEADER_LENGTHS[..]
        );
        let ours = build::format_description(&FormatDescriptionSpec {
            server_version: real.server_version,
            timestamp: ev.timestamp(),
            create_timestamp: real.create_timestamp,
            server_id: ev.server_id(),
            log_pos: ev.log_pos(),
            flags: ev.flags(),
            checksum: ev.checksum(),
        })
        .unwrap();
        assert_eq!(ours, ev.raw());
    }
}

/// Writes the re-stamped virtual file and has MariaDB's own reader,
/// `mariadb-binlog --verify-binlog-checksum`, decode it. Skipped (with a
/// note) where MariaDB's client tools are not installed.
#[test]
fn mariadb_binlog_reads_our_virtual_file() {
    let tool = "mariadb-binlog";
    if std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: {tool} not installed");
        return;
    }
    let (trxs, _) = assemble_all();
    let mut file = binlog::BINLOG_MAGIC.to_vec();
    let mut r = Restamper::new(4, Checksum::Crc32);
    let fde = build::format_description(&FormatDescriptionSpec {
        server_version: "10.11.19-MariaDB-phx",
        timestamp: 1_700_000_000,
        create_timestamp: 0,
        server_id: 99,
        log_pos: 0,
        flags: 0,
        checksum: Checksum::Crc32,
    })
    .unwrap();
    r.append(&fde, &mut file).unwrap();
    let gl = build::gtid_list(
        &build::EventSpec {
            timestamp: 1_700_000_000,
            event_type: EventType::GTID_LIST,
            server_id: 99,
            log_pos: 0,
            flags: 0,
        },
        &[],
        0,
        Checksum::Crc32,
    )
    .unwrap();
    r.append(&gl, &mut file).unwrap();
    for t in trxs.iter().filter(|t| t.checksum() == Checksum::Crc32) {
        t.restamp_into(&mut r, &mut file).unwrap();
    }
    let path = std::env::temp_dir().join(format!("binlog-virtual-{}.000001", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let out = std::process::Command::new(tool)
        .arg("--verify-binlog-checksum")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tool} failed: {stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    // Every GTID is there, at our positions, and the file ends cleanly.
    for t in trxs.iter().filter(|t| t.checksum() == Checksum::Crc32) {
        assert!(
            stdout.contains(&format!("GTID {}", t.gtid())),
            "{}",
            t.gtid()
        );
    }
    assert!(stdout.contains(&format!("end_log_pos {}", file.len())));
    assert!(stdout.contains("CREATE DATABASE fx"));
    assert!(stdout.contains("XA COMMIT X'667861',X'',1"));
}
