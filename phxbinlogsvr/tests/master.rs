//! The replication master against real MariaDB 10.11 replicas.
//!
//! Each test starts an "origin" mariadbd, runs SQL on it, reads the
//! transactions back from its binlog files into a [`MemorySource`], serves
//! them with [`MasterServer`], and points a second mariadbd (the replica)
//! at it with `MASTER_USE_GTID=slave_pos`.
//!
//! `RUST_LOG=phxbinlogsvr=debug cargo test -p phxbinlogsvr --test master --
//! --nocapture` shows the conversation (every query the replica sends).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use binlog::{Assembled, Checksum, EventReader, GtidPos, Transaction, TransactionAssembler};
use phxbinlogsvr::master::{MasterConfig, MasterHandle, MasterServer, MemorySource, Password};
use testkit::mysql_async::prelude::Queryable;
use testkit::mysql_async::{self, Row};
use testkit::{MariaDb, REPL_PASSWORD, REPL_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Our server_id (distinct from testkit's, which start at 1000).
const MASTER_SERVER_ID: u32 = 4242;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Every complete transaction in `db`'s binlog files that `seen` does not
/// contain yet, in log order (FLUSH BINARY LOGS first, so every file but the
/// new empty one is closed).
async fn binlog_transactions(db: &MariaDb, seen: &GtidPos) -> Vec<Transaction> {
    db.exec("FLUSH BINARY LOGS").await.unwrap();
    let mut files: Vec<_> = std::fs::read_dir(db.datadir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("mysql-bin."))
                .is_some_and(|ext| ext.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    files.sort();
    // The newest file is the one MariaDB writes now: nothing but its header
    // events after the FLUSH, and its FORMAT_DESCRIPTION carries
    // LOG_EVENT_BINLOG_IN_USE_F, which MariaDB leaves out of the CRC (the
    // binlog crate does not know that yet: it reports a checksum mismatch).
    files.pop();
    let mut out = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let mut asm = TransactionAssembler::new(Checksum::Crc32);
        asm.set_binlog_file(path.file_name().unwrap().to_str().unwrap());
        for ev in EventReader::binlog_file(&bytes).unwrap() {
            let ev = ev.unwrap();
            if let Some(Assembled::Transaction(t)) = asm.push(ev.raw()).unwrap()
                && !seen.contains(&t.gtid())
            {
                out.push(t);
            }
        }
    }
    out
}

/// Appends the origin's new transactions to the source; returns how many.
async fn sync_source(origin: &MariaDb, source: &MemorySource) -> usize {
    let new = binlog_transactions(origin, &source.gtid_pos()).await;
    let n = new.len();
    source.append_all(new).unwrap();
    n
}

fn server_config(port_source: &str) -> MasterConfig {
    let mut cfg = MasterConfig::new(
        port_source.parse().unwrap(),
        REPL_USER,
        Password::new(REPL_PASSWORD),
        MASTER_SERVER_ID,
    );
    cfg.default_heartbeat = Some(Duration::from_secs(1));
    cfg
}

async fn start_server(cfg: MasterConfig, source: &Arc<MemorySource>) -> MasterHandle {
    MasterServer::bind(cfg, Arc::clone(source))
        .await
        .unwrap()
        .spawn()
}

/// CHANGE MASTER to our server, 1 s heartbeats, a short net timeout (so a
/// missing heartbeat would show as a reconnect), START SLAVE.
async fn replicate_from_server(replica: &MariaDb, handle: &MasterHandle) {
    replica
        .exec(&format!(
            "SET GLOBAL slave_net_timeout=4; \
             CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, \
             MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', \
             MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1, MASTER_USE_GTID=slave_pos; \
             START SLAVE",
            handle.local_addr().port()
        ))
        .await
        .unwrap();
}

async fn slave_status(replica: &MariaDb) -> HashMap<String, String> {
    let mut conn = replica.conn().await.unwrap();
    let row: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await.unwrap();
    conn.disconnect().await.unwrap();
    let Some(row) = row else {
        return HashMap::new();
    };
    let cols = row.columns();
    let mut out = HashMap::new();
    for (i, c) in cols.iter().enumerate() {
        let v: Option<String> = row.get_opt(i).and_then(|r| r.ok()).flatten();
        out.insert(c.name_str().into_owned(), v.unwrap_or_default());
    }
    out
}

/// Polls until `check` holds; panics after `timeout` with `context()`.
async fn wait_until<C, F>(what: &str, timeout: Duration, mut check: C, context: F)
where
    C: AsyncFnMut() -> bool,
    F: AsyncFnOnce() -> String,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}; {}", context().await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the replica has applied every GTID of `pos` with both
/// threads running.
async fn wait_caught_up(replica: &MariaDb, pos: &GtidPos) {
    let want = pos.clone();
    wait_until(
        &format!("the replica to reach {pos}"),
        Duration::from_secs(90),
        async || {
            let s = slave_status(replica).await;
            let applied: GtidPos = replica.gtid_slave_pos().await.unwrap().parse().unwrap();
            applied.includes(&want)
                && s.get("Slave_IO_Running").map(String::as_str) == Some("Yes")
                && s.get("Slave_SQL_Running").map(String::as_str) == Some("Yes")
        },
        async || {
            format!(
                "gtid_slave_pos={:?}, status={:?}\nreplica log:\n{}",
                replica.gtid_slave_pos().await,
                slave_status(replica).await,
                replica.error_log_tail(30)
            )
        },
    )
    .await;
}

async fn checksums(db: &MariaDb, tables: &str) -> Vec<(String, Option<String>)> {
    db.query_rows(&format!("CHECKSUM TABLE {tables}"))
        .await
        .unwrap()
}

async fn assert_same_tables(origin: &MariaDb, replica: &MariaDb, tables: &str) {
    let a = checksums(origin, tables).await;
    let b = checksums(replica, tables).await;
    assert!(a.iter().all(|(_, c)| c.is_some()), "{a:?}");
    assert_eq!(a, b, "CHECKSUM TABLE differs");
}

/// DDL and DML of every kind the stream must carry.
async fn initial_workload(origin: &MariaDb) {
    origin
        .exec(
            "CREATE DATABASE m; \
             CREATE TABLE m.t1 (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(100), n INT) ENGINE=InnoDB; \
             CREATE TABLE m.t2 (id BIGINT PRIMARY KEY, payload LONGBLOB) ENGINE=InnoDB; \
             CREATE TABLE m.t3 (id INT PRIMARY KEY, note TEXT) ENGINE=MyISAM; \
             INSERT INTO m.t1 (v, n) VALUES ('a', 1), ('b', 2), ('c', 3), ('d', 4); \
             BEGIN; INSERT INTO m.t1 (v, n) VALUES ('e', 5); UPDATE m.t1 SET n = n * 10 WHERE n < 3; \
                    DELETE FROM m.t1 WHERE v = 'c'; COMMIT; \
             INSERT INTO m.t3 VALUES (1, 'not transactional'), (2, 'ends with COMMIT'); \
             UPDATE m.t3 SET note = CONCAT(note, '!'); \
             ALTER TABLE m.t1 ADD COLUMN extra DATETIME NULL; \
             UPDATE m.t1 SET extra = '2024-01-02 03:04:05' WHERE id % 2 = 0",
        )
        .await
        .unwrap();
    // Big rows: 3 MiB (a few packets' worth), and 17 MiB (one row event
    // over 16 MiB: continuation packets).
    let mut conn = origin.conn().await.unwrap();
    for (id, size) in [(1i64, 3usize << 20), (2, 17 << 20)] {
        let blob: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        conn.exec_drop("INSERT INTO m.t2 VALUES (?, ?)", (id, blob))
            .await
            .unwrap();
    }
    conn.query_drop("BEGIN").await.unwrap();
    for i in 0..50 {
        conn.exec_drop(
            "INSERT INTO m.t1 (v, n) VALUES (?, ?)",
            (format!("bulk{i}"), i),
        )
        .await
        .unwrap();
    }
    conn.query_drop("COMMIT").await.unwrap();
    conn.disconnect().await.unwrap();
}

async fn more_work(origin: &MariaDb, round: u32) {
    origin
        .exec(&format!(
            "INSERT INTO m.t1 (v, n) VALUES ('live{round}', {round}); \
             UPDATE m.t1 SET n = n + 1 WHERE v LIKE 'bulk%'; \
             DELETE FROM m.t1 WHERE v = 'bulk{round}'; \
             INSERT INTO m.t2 VALUES ({}, REPEAT('z', 100000)); \
             INSERT INTO m.t3 VALUES ({}, 'round {round}')",
            100 + round,
            100 + round
        ))
        .await
        .unwrap();
}

const TABLES: &str = "m.t1, m.t2, m.t3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_catches_up_follows_live_survives_idle_and_reconnects() {
    init_tracing();
    let started = Instant::now();
    let (origin, replica) = tokio::join!(
        MariaDb::builder().name("origin").start(),
        // As on a real non-master node: semi-sync replica flags on.
        MariaDb::builder()
            .name("replica")
            .replica_mode(true)
            .start(),
    );
    let (origin, replica) = (origin.unwrap(), replica.unwrap());
    initial_workload(&origin).await;

    let source = Arc::new(MemorySource::new());
    let n = sync_source(&origin, &source).await;
    assert!(n >= 12, "only {n} transactions in the origin's binlog");
    let handle = start_server(server_config("127.0.0.1:0"), &source).await;
    replicate_from_server(&replica, &handle).await;

    // 1. Catch up on the backlog.
    wait_caught_up(&replica, &source.gtid_pos()).await;
    assert_same_tables(&origin, &replica, TABLES).await;
    let caught_up = started.elapsed();
    let stats = handle.stats();
    assert_eq!(stats.dumps_started, 1);
    assert_eq!(stats.unknown_queries, 0, "{stats:?}");
    assert_eq!(stats.auth_failures, 0);
    assert!(stats.transactions_sent >= n as u64, "{stats:?}");

    // 2. Live: new transactions arrive on the same connection.
    for round in 1..=3 {
        more_work(&origin, round).await;
        assert!(sync_source(&origin, &source).await >= 5);
        wait_caught_up(&replica, &source.gtid_pos()).await;
    }
    assert_same_tables(&origin, &replica, TABLES).await;
    assert_eq!(handle.stats().dumps_started, 1, "the replica reconnected");

    // 3. Idle longer than slave_net_timeout (4 s): only heartbeats keep the
    // replica from reconnecting.
    let hb_before = replica
        .status_u64("Slave_received_heartbeats")
        .await
        .unwrap();
    let sent_before = handle.stats().heartbeats_sent;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let s = slave_status(&replica).await;
    assert_eq!(s["Slave_IO_Running"], "Yes", "{s:?}");
    assert_eq!(s["Last_IO_Errno"], "0", "{s:?}");
    let stats = handle.stats();
    assert_eq!(
        stats.dumps_started, 1,
        "the replica reconnected while idle: {stats:?}"
    );
    assert!(stats.heartbeats_sent >= sent_before + 5, "{stats:?}");
    let hb_after = replica
        .status_u64("Slave_received_heartbeats")
        .await
        .unwrap();
    assert!(
        hb_after >= hb_before + 5,
        "replica saw {hb_before} -> {hb_after} heartbeats"
    );

    // 4. Reconnect: the replica resumes at its GTID, nothing twice.
    replica.exec("STOP SLAVE").await.unwrap();
    more_work(&origin, 4).await;
    sync_source(&origin, &source).await;
    let sent_before = handle.stats().transactions_sent;
    replica.exec("START SLAVE").await.unwrap();
    wait_caught_up(&replica, &source.gtid_pos()).await;
    assert_same_tables(&origin, &replica, TABLES).await;
    let stats = handle.stats();
    assert_eq!(stats.dumps_started, 2, "{stats:?}");
    // Only round 4's transactions were sent again.
    assert_eq!(stats.transactions_sent - sent_before, 5, "{stats:?}");
    let rows = "SELECT COUNT(*) FROM m.t1";
    assert_eq!(
        origin.query_one::<i64>(rows).await.unwrap(),
        replica.query_one::<i64>(rows).await.unwrap()
    );
    assert_eq!(
        replica.gtid_slave_pos().await.unwrap(),
        origin.gtid_binlog_pos().await.unwrap()
    );

    eprintln!(
        "caught up on {n} transactions in {caught_up:?}; whole test {:?}; {:?}",
        started.elapsed(),
        handle.stats()
    );
    handle.shutdown().await;
}

/// A small workload (no big rows).
async fn small_workload(origin: &MariaDb, rows: usize) {
    origin
        .exec(
            "CREATE DATABASE m; \
             CREATE TABLE m.t1 (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(600), n INT) ENGINE=InnoDB",
        )
        .await
        .unwrap();
    let mut conn = origin.conn().await.unwrap();
    for i in 0..rows {
        conn.exec_drop(
            "INSERT INTO m.t1 (v, n) VALUES (?, ?)",
            ("r".repeat(500), i as i64),
        )
        .await
        .unwrap();
    }
    conn.query_drop("UPDATE m.t1 SET n = n + 1000 WHERE id % 3 = 0")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_file_rotates_and_gtid_lists_are_accepted() {
    init_tracing();
    let (origin, replica) = tokio::join!(
        MariaDb::builder().name("origin").start(),
        MariaDb::builder().name("replica").start(),
    );
    let (origin, replica) = (origin.unwrap(), replica.unwrap());
    small_workload(&origin, 60).await;
    let source = Arc::new(MemorySource::new());
    sync_source(&origin, &source).await;

    // Tiny virtual files: a ROTATE + FORMAT_DESCRIPTION + GTID_LIST every
    // few transactions.
    let mut cfg = server_config("127.0.0.1:0");
    cfg.max_file_size = 8192;
    cfg.send_gtid_list = true;
    let handle = start_server(cfg, &source).await;
    replicate_from_server(&replica, &handle).await;
    wait_caught_up(&replica, &source.gtid_pos()).await;
    assert_same_tables(&origin, &replica, "m.t1").await;
    let s = slave_status(&replica).await;
    let file = &s["Master_Log_File"];
    assert!(
        file.starts_with("phxsql-bin.") && file.as_str() > "phxsql-bin.000005",
        "expected several rotations, replica is at {file}"
    );

    // Live and across a reconnect, rotations go on.
    replica.exec("STOP SLAVE").await.unwrap();
    small_workload_more(&origin).await;
    sync_source(&origin, &source).await;
    replica.exec("START SLAVE").await.unwrap();
    wait_caught_up(&replica, &source.gtid_pos()).await;
    small_workload_more(&origin).await;
    sync_source(&origin, &source).await;
    wait_caught_up(&replica, &source.gtid_pos()).await;
    assert_same_tables(&origin, &replica, "m.t1").await;
    assert_eq!(handle.stats().dumps_started, 2);
    // Idle over the heartbeat period after rotations: heartbeats name the
    // current file and position, and the replica accepts them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = slave_status(&replica).await;
    assert_eq!(s["Slave_IO_Running"], "Yes", "{s:?}");
    assert_eq!(handle.stats().dumps_started, 2);
    handle.shutdown().await;
}

async fn small_workload_more(origin: &MariaDb) {
    let mut conn = origin.conn().await.unwrap();
    for i in 0..20 {
        conn.exec_drop(
            "INSERT INTO m.t1 (v, n) VALUES (?, ?)",
            ("s".repeat(400), i as i64),
        )
        .await
        .unwrap();
    }
    conn.query_drop("DELETE FROM m.t1 WHERE n % 7 = 1")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

/// Waits until the replica's IO thread stopped with an error; returns
/// (Last_IO_Errno, Last_IO_Error).
async fn wait_io_error(replica: &MariaDb) -> (String, String) {
    wait_until(
        "the replica's IO thread to stop with an error",
        Duration::from_secs(60),
        async || {
            let s = slave_status(replica).await;
            s.get("Slave_IO_Running").map(String::as_str) == Some("No")
                && s.get("Last_IO_Errno").is_some_and(|e| e != "0")
        },
        async || format!("{:?}", slave_status(replica).await),
    )
    .await;
    let s = slave_status(replica).await;
    (s["Last_IO_Errno"].clone(), s["Last_IO_Error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_source_trimmed_is_error_1236_naming_the_gtid() {
    init_tracing();
    let (origin, replica, fresh) = tokio::join!(
        MariaDb::builder().name("origin").start(),
        MariaDb::builder().name("replica").start(),
        MariaDb::builder().name("fresh").start(),
    );
    let (origin, replica, fresh) = (origin.unwrap(), replica.unwrap(), fresh.unwrap());
    small_workload(&origin, 10).await;
    let source = Arc::new(MemorySource::new());
    sync_source(&origin, &source).await;
    let all: Vec<_> = binlog_transactions(&origin, &GtidPos::new())
        .await
        .iter()
        .map(|t| t.gtid())
        .collect();
    assert!(all.len() >= 10);
    // The log keeps only what follows the 6th transaction.
    assert!(source.trim_through(&all[5]));
    let handle = start_server(server_config("127.0.0.1:0"), &source).await;

    // A replica at the 3rd transaction: what it needs next is gone.
    let wanted = all[2];
    replica
        .exec(&format!("SET GLOBAL gtid_slave_pos='{wanted}'"))
        .await
        .unwrap();
    replicate_from_server(&replica, &handle).await;
    let (errno, error) = wait_io_error(&replica).await;
    assert_eq!(errno, "1236", "{error}");
    assert!(error.contains(&wanted.to_string()), "{error}");
    assert!(error.contains(&all[5].to_string()), "{error}");
    eprintln!("Last_IO_Error: {error}");

    // A replica with no position at all needs the whole domain: also 1236.
    replicate_from_server(&fresh, &handle).await;
    let (errno, error) = wait_io_error(&fresh).await;
    assert_eq!(errno, "1236", "{error}");
    assert!(error.contains("no GTID in domain 0"), "{error}");

    let stats = handle.stats();
    assert!(stats.dump_errors >= 2, "{stats:?}");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_closed_and_the_replica_keeps_streaming() {
    init_tracing();
    let (origin, replica) = tokio::join!(
        MariaDb::builder().name("origin").start(),
        MariaDb::builder().name("replica").start(),
    );
    let (origin, replica) = (origin.unwrap(), replica.unwrap());
    small_workload(&origin, 10).await;
    let source = Arc::new(MemorySource::new());
    sync_source(&origin, &source).await;
    let mut cfg = server_config("127.0.0.1:0");
    cfg.handshake_timeout = Duration::from_secs(2);
    let handle = start_server(cfg, &source).await;
    let addr = handle.local_addr();
    replicate_from_server(&replica, &handle).await;
    wait_caught_up(&replica, &source.gtid_pos()).await;

    // Expects the server to close the connection within a few seconds.
    async fn closed_by_server(mut s: TcpStream) {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue, // greeting, ERR
                Err(_) => panic!("the server kept a bad connection open"),
            }
        }
    }

    // 1. Raw garbage after the greeting.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.write_all(&garbage).await.unwrap();
    closed_by_server(s).await;
    // 2. Garbage, then hang up at once.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(s);
    // 3. A truncated packet: the header promises 200 bytes, 20 come.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[200, 0, 0, 1]).await.unwrap();
    s.write_all(&[0x8d; 20]).await.unwrap();
    s.shutdown().await.unwrap();
    closed_by_server(s).await;
    // 4. A huge length.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 1]).await.unwrap();
    closed_by_server(s).await;
    // 5. Silence: the handshake times out.
    let s = TcpStream::connect(addr).await.unwrap();
    closed_by_server(s).await;
    // 6. A wrong password: ERR 1045.
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(addr.port())
        .user(Some(REPL_USER))
        .pass(Some("not-the-password"))
        .prefer_socket(false);
    match mysql_async::Conn::new(opts).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045, "{e}"),
        other => panic!("expected ERR 1045, got {other:?}"),
    }

    // The replica never noticed.
    for round in 0..2 {
        origin
            .exec(&format!(
                "INSERT INTO m.t1 (v, n) VALUES ('after-bad-{round}', 1)"
            ))
            .await
            .unwrap();
        sync_source(&origin, &source).await;
        wait_caught_up(&replica, &source.gtid_pos()).await;
    }
    assert_same_tables(&origin, &replica, "m.t1").await;
    let stats = handle.stats();
    assert_eq!(stats.dumps_started, 1, "{stats:?}");
    assert_eq!(stats.auth_failures, 1, "{stats:?}");
    assert!(stats.protocol_errors >= 4, "{stats:?}");
    assert_eq!(stats.connections_active, 1, "{stats:?}");
    handle.shutdown().await;
}

// ----- the protocol without MariaDB: a raw client -----

mod raw {
    use std::net::SocketAddr;

    use mysql_common::constants::CapabilityFlags;
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::{
        AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse,
    };
    use mysql_common::proto::MySerialize;
    use mysql_common::scramble::scramble_native;
    use phxbinlogsvr::master::packet::{PacketReader, PacketWriter};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    /// A minimal MySQL client speaking the protocol by hand.
    pub struct Client {
        pub reader: PacketReader<OwnedReadHalf>,
        pub writer: PacketWriter<OwnedWriteHalf>,
        pub seq: u8,
    }

    #[derive(Debug, PartialEq)]
    pub enum Answer {
        Ok,
        Err(u16, String),
        Rows(Vec<Vec<Option<String>>>),
    }

    fn lenenc(buf: &mut &[u8]) -> Option<u64> {
        let (&first, rest) = buf.split_first()?;
        *buf = rest;
        let n = match first {
            0xfc => 2,
            0xfd => 3,
            0xfe => 8,
            0xfb => return None,
            x => return Some(u64::from(x)),
        };
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(buf[i]) << (8 * i);
        }
        *buf = &buf[n..];
        Some(v)
    }

    pub fn err_of(p: &[u8]) -> (u16, String) {
        let code = u16::from_le_bytes([p[1], p[2]]);
        (code, String::from_utf8_lossy(&p[9..]).into_owned())
    }

    impl Client {
        /// Connects and authenticates; `plugin` is what the client claims
        /// to use first (anything but native forces an AuthSwitchRequest).
        pub async fn connect(
            addr: SocketAddr,
            user: &str,
            password: &str,
            plugin: AuthPlugin<'static>,
        ) -> Result<(Client, bool), (u16, String)> {
            let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
            let mut c = Client {
                reader: PacketReader::new(r, 64 << 20),
                writer: PacketWriter::new(w),
                seq: 0,
            };
            let greeting = c.reader.read(&mut c.seq).await.unwrap().unwrap();
            if greeting[0] == 0xff {
                return Err(err_of(&greeting));
            }
            let hs: HandshakePacket<'_> = ParseBuf(&greeting).parse(()).unwrap();
            let nonce = hs.nonce();
            let first_answer = match plugin {
                AuthPlugin::MysqlNativePassword => {
                    scramble_native(&nonce, password.as_bytes()).map_or(vec![], |a| a.to_vec())
                }
                _ => vec![7u8; 32],
            };
            let caps = CapabilityFlags::CLIENT_PROTOCOL_41
                | CapabilityFlags::CLIENT_SECURE_CONNECTION
                | CapabilityFlags::CLIENT_PLUGIN_AUTH
                | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
                | CapabilityFlags::CLIENT_LONG_PASSWORD
                | CapabilityFlags::CLIENT_TRANSACTIONS;
            let resp = HandshakeResponse::new(
                Some(first_answer),
                (10, 11, 0),
                Some(user.as_bytes()),
                None::<&[u8]>,
                Some(plugin),
                caps,
                None,
                16 << 20,
            );
            let mut buf = Vec::new();
            resp.serialize(&mut buf);
            c.writer.write(&mut c.seq, &buf).await.unwrap();
            c.writer.flush().await.unwrap();
            let mut reply = c.reader.read(&mut c.seq).await.unwrap().unwrap();
            let mut switched = false;
            if reply[0] == 0xfe {
                let sw: AuthSwitchRequest<'_> = ParseBuf(&reply).parse(()).unwrap();
                assert_eq!(sw.auth_plugin().as_bytes(), b"mysql_native_password");
                assert_eq!(sw.plugin_data(), &nonce[..]);
                let a = scramble_native(sw.plugin_data(), password.as_bytes()).unwrap();
                c.writer.write(&mut c.seq, &a).await.unwrap();
                c.writer.flush().await.unwrap();
                reply = c.reader.read(&mut c.seq).await.unwrap().unwrap();
                switched = true;
            }
            match reply[0] {
                0x00 => Ok((c, switched)),
                0xff => Err(err_of(&reply)),
                other => panic!("unexpected auth reply {other:#x}"),
            }
        }

        /// Sends a command packet (sequence id 0).
        pub async fn send(&mut self, payload: &[u8]) {
            self.seq = 0;
            self.writer.write(&mut self.seq, payload).await.unwrap();
            self.writer.flush().await.unwrap();
        }

        pub async fn read(&mut self) -> Option<Vec<u8>> {
            self.reader.read(&mut self.seq).await.unwrap()
        }

        /// Sends a command and reads an OK, an ERR or a text result set.
        pub async fn command(&mut self, payload: &[u8]) -> Answer {
            self.send(payload).await;
            let first = self.read().await.unwrap();
            match first[0] {
                0x00 => return Answer::Ok,
                0xff => {
                    let (c, m) = err_of(&first);
                    return Answer::Err(c, m);
                }
                _ => {}
            }
            let ncols = lenenc(&mut &first[..]).unwrap() as usize;
            for _ in 0..ncols {
                self.read().await.unwrap();
            }
            assert_eq!(self.read().await.unwrap()[0], 0xfe);
            let mut rows = Vec::new();
            loop {
                let p = self.read().await.unwrap();
                if p[0] == 0xfe && p.len() < 9 {
                    return Answer::Rows(rows);
                }
                let mut rest = &p[..];
                let mut row = Vec::new();
                for _ in 0..ncols {
                    if rest[0] == 0xfb {
                        rest = &rest[1..];
                        row.push(None);
                    } else {
                        let n = lenenc(&mut rest).unwrap() as usize;
                        row.push(Some(String::from_utf8_lossy(&rest[..n]).into_owned()));
                        rest = &rest[n..];
                    }
                }
                rows.push(row);
            }
        }

        pub async fn query(&mut self, sql: &str) -> Answer {
            let mut p = vec![0x03];
            p.extend_from_slice(sql.as_bytes());
            self.command(&p).await
        }
    }
}

fn rows(v: &[&[Option<&str>]]) -> raw::Answer {
    raw::Answer::Rows(
        v.iter()
            .map(|r| r.iter().map(|c| c.map(str::to_string)).collect())
            .collect(),
    )
}

/// A synthetic transaction: GTID, QUERY `BEGIN`-ish statement of
/// `query_len` bytes, XID.
fn synthetic(seq: u64, query_len: usize) -> Transaction {
    use binlog::build::{self, EventSpec};
    use binlog::{EventType, Gtid, GtidEvent, QueryEvent};
    let spec = EventSpec {
        timestamp: 1_700_000_000,
        event_type: EventType::UNKNOWN,
        server_id: 7,
        log_pos: 999_999, // whatever the origin had: re-stamped anyway
        flags: 0,
    };
    let mut bytes = build::gtid_event(
        &spec,
        &GtidEvent::new(Gtid::new(0, 7, seq), 0),
        Checksum::Crc32,
    )
    .unwrap();
    let text = format!("INSERT INTO t VALUES ('{}')", "q".repeat(query_len));
    bytes.extend(
        build::query_event(
            &spec,
            &QueryEvent {
                thread_id: 1,
                exec_time: 0,
                error_code: 0,
                status_vars: &[],
                db: b"d",
                query: text.as_bytes(),
            },
            Checksum::Crc32,
        )
        .unwrap(),
    );
    bytes.extend(build::xid_event(&spec, seq, Checksum::Crc32).unwrap());
    Transaction::from_bytes(&bytes, Checksum::Crc32).unwrap()
}

fn dump_command(flags: u16, server_id: u32, file: &str, pos: u32) -> Vec<u8> {
    let mut p = vec![0x12];
    p.extend_from_slice(&pos.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&server_id.to_le_bytes());
    p.extend_from_slice(file.as_bytes());
    p
}

async fn replica_setup(c: &mut raw::Client, connect_state: &str) {
    for q in [
        "SET @master_binlog_checksum= @@global.binlog_checksum".to_string(),
        "SET @mariadb_slave_capability=4".to_string(),
        format!("SET @slave_connect_state='{connect_state}'"),
        "SET @slave_gtid_strict_mode=1".to_string(),
    ] {
        assert_eq!(c.query(&q).await, raw::Answer::Ok, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_details_with_a_raw_client() {
    use mysql_common::packets::AuthPlugin;
    init_tracing();
    let source = Arc::new(MemorySource::new());
    // The 3rd transaction holds one event over 16 MiB: continuation packets.
    for (seq, len) in [(1, 10), (2, 1000), (3, 17 << 20), (4, 10)] {
        source.append(synthetic(seq, len)).unwrap();
    }
    let mut cfg = server_config("127.0.0.1:0");
    cfg.max_connections = 3;
    let handle = start_server(cfg, &source).await;
    let addr = handle.local_addr();

    // Login, natively and through an auth switch; bad credentials.
    let (mut c, switched) = raw::Client::connect(
        addr,
        REPL_USER,
        REPL_PASSWORD,
        AuthPlugin::MysqlNativePassword,
    )
    .await
    .unwrap();
    assert!(!switched);
    let (mut c2, switched) =
        raw::Client::connect(addr, REPL_USER, REPL_PASSWORD, AuthPlugin::Ed25519)
            .await
            .unwrap();
    assert!(switched);
    for (user, pw) in [
        (REPL_USER, "nope"),
        ("root", REPL_PASSWORD),
        (REPL_USER, ""),
    ] {
        let err = raw::Client::connect(addr, user, pw, AuthPlugin::MysqlNativePassword)
            .await
            .err()
            .unwrap();
        assert_eq!(err.0, 1045, "{err:?}");
        assert!(err.1.contains(&format!("'{user}'@'127.0.0.1'")), "{err:?}");
    }

    // The replica's queries.
    assert_eq!(
        c.query("SHOW VARIABLES LIKE 'SERVER_ID'").await,
        rows(&[&[Some("server_id"), Some("4242")]])
    );
    assert_eq!(
        c.query("SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'")
            .await,
        rows(&[])
    );
    assert_eq!(
        c.query("SELECT @@GLOBAL.gtid_domain_id").await,
        rows(&[&[Some("0")]])
    );
    assert_eq!(
        c.query("SELECT @master_binlog_checksum").await,
        rows(&[&[None]])
    );
    assert_eq!(
        c.query("SET @master_binlog_checksum= @@global.binlog_checksum")
            .await,
        raw::Answer::Ok
    );
    assert_eq!(
        c.query("SELECT @master_binlog_checksum").await,
        rows(&[&[Some("CRC32")]])
    );
    match c.query("SELECT UNIX_TIMESTAMP()").await {
        raw::Answer::Rows(r) => {
            assert!(r[0][0].as_ref().unwrap().parse::<u64>().unwrap() > 1_600_000_000)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.query("SET NAMES utf8mb4").await, raw::Answer::Ok);
    // Unknown statements and commands: ERR, and the connection goes on.
    assert!(matches!(
        c.query("SHOW MASTER STATUS").await,
        raw::Answer::Err(1235, _)
    ));
    assert!(matches!(
        c.query("SELECT @@rpl_semi_sync_master_enabled").await,
        raw::Answer::Err(1193, _)
    ));
    assert!(matches!(
        c.command(&[0x1f]).await,
        raw::Answer::Err(1047, _)
    ));
    assert!(matches!(
        c.command(&[0xee, 1, 2, 3]).await,
        raw::Answer::Err(1047, _)
    ));
    assert_eq!(c.command(&[0x0e]).await, raw::Answer::Ok); // COM_PING
    let mut reg = vec![0x15];
    reg.extend_from_slice(&77u32.to_le_bytes());
    reg.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.command(&reg).await, raw::Answer::Ok);

    // Too many connections (3 allowed: c, c2, and this one; the 4th is
    // refused).
    let (_c3, _) = raw::Client::connect(
        addr,
        REPL_USER,
        REPL_PASSWORD,
        AuthPlugin::MysqlNativePassword,
    )
    .await
    .unwrap();
    let refused = raw::Client::connect(
        addr,
        REPL_USER,
        REPL_PASSWORD,
        AuthPlugin::MysqlNativePassword,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.0, 1040, "{refused:?}");
    drop(_c3);

    // A position-based request (no connect state) past the start: 1236.
    for q in [
        "SET @master_binlog_checksum= @@global.binlog_checksum",
        "SET @mariadb_slave_capability=4",
    ] {
        assert_eq!(c2.query(q).await, raw::Answer::Ok);
    }
    match c2
        .command(&dump_command(0, 78, "mysql-bin.000007", 1234))
        .await
    {
        raw::Answer::Err(1236, m) => assert!(m.contains("GTID replicas only"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A connect state the log never had (strict): 1236, naming it.
    replica_setup(&mut c2, "0-9-2").await;
    match c2.command(&dump_command(0, 78, "", 4)).await {
        raw::Answer::Err(1236, m) => assert!(m.contains("0-9-2"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A non-blocking dump from 0-7-1: ROTATE, FDE, transactions 2..4, EOF.
    replica_setup(&mut c, "0-7-1").await;
    c.send(&dump_command(1, 77, "", 4)).await;
    let mut events = Vec::new();
    loop {
        let p = c.read().await.unwrap();
        if p[0] == 0xfe && p.len() < 9 {
            break;
        }
        assert_eq!(p[0], 0, "not an event packet");
        events.push(p[1..].to_vec());
    }
    let parsed: Vec<binlog::Event<'_>> = events
        .iter()
        .map(|e| binlog::Event::parse(e, Checksum::Crc32).unwrap())
        .collect();
    assert_eq!(parsed[0].event_type(), binlog::EventType::ROTATE);
    assert!(parsed[0].is_artificial());
    assert_eq!(parsed[0].log_pos(), 0);
    assert_eq!(parsed[0].server_id(), MASTER_SERVER_ID);
    let rot = parsed[0].rotate().unwrap();
    assert_eq!((rot.position, rot.file_name), (4, "phxsql-bin.000001"));
    assert_eq!(
        parsed[1].event_type(),
        binlog::EventType::FORMAT_DESCRIPTION
    );
    let mut pos = 4u64;
    for e in &parsed[1..] {
        pos += e.len() as u64;
        assert_eq!(u64::from(e.log_pos()), pos, "positions are continuous");
    }
    // The events after the FDE are the stored ones, bodies untouched.
    let stored: Vec<Vec<u8>> = [2u64, 3, 4]
        .iter()
        .flat_map(|&s| {
            let t = synthetic(s, [0, 10, 1000, 17 << 20, 10][s as usize]);
            t.events().map(|e| e.body().to_vec()).collect::<Vec<_>>()
        })
        .collect();
    let sent: Vec<Vec<u8>> = parsed[2..].iter().map(|e| e.body().to_vec()).collect();
    assert_eq!(sent.len(), stored.len());
    assert!(sent == stored, "event bodies differ");
    assert!(events.iter().any(|e| e.len() > 16 << 20));
    assert_eq!(
        c.command(&[0x0e]).await,
        raw::Answer::Ok,
        "usable after the dump"
    );

    // Two blocking dumps of the same replica: the newer one replaces the
    // older (as MariaDB kills zombie dump threads).
    replica_setup(&mut c2, "0-7-4").await;
    c2.send(&dump_command(0, 77, "", 4)).await;
    assert_eq!(c2.read().await.unwrap()[0], 0); // ROTATE
    replica_setup(&mut c, "0-7-4").await;
    c.send(&dump_command(0, 77, "", 4)).await;
    assert_eq!(c.read().await.unwrap()[0], 0);
    // c2's connection is closed; c streams on (FDE, then a heartbeat within
    // a second, the default period here).
    let mut n = 0;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), c2.reader.read(&mut c2.seq)).await {
            Err(_) => break false,
            Ok(Ok(None) | Err(_)) => break true,
            Ok(Ok(Some(_))) => {
                n += 1;
                assert!(n < 10, "the older dump goes on");
            }
        }
    };
    assert!(closed, "the older dump's connection stays open");
    let fde = c.read().await.unwrap();
    assert_eq!(fde[1 + 4], 15);
    let hb = tokio::time::timeout(Duration::from_secs(3), c.read())
        .await
        .unwrap()
        .unwrap();
    let hb = binlog::Event::parse(&hb[1..], Checksum::Crc32).unwrap();
    assert_eq!(hb.event_type(), binlog::EventType::HEARTBEAT);
    assert_eq!(hb.heartbeat().unwrap().file_name, "phxsql-bin.000001");
    assert_eq!(u64::from(hb.log_pos()), 4 + (fde.len() as u64 - 1));
    // A live append reaches the streaming dump.
    source.append(synthetic(5, 10)).unwrap();
    loop {
        let p = tokio::time::timeout(Duration::from_secs(3), c.read())
            .await
            .unwrap()
            .unwrap();
        let e = binlog::Event::parse(&p[1..], Checksum::Crc32).unwrap();
        if e.event_type() == binlog::EventType::GTID {
            assert_eq!(e.gtid().unwrap().gtid(), binlog::Gtid::new(0, 7, 5));
            break;
        }
    }
    let stats = handle.stats();
    assert_eq!(stats.auth_failures, 3, "{stats:?}");
    assert_eq!(stats.connections_refused, 1, "{stats:?}");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_slave_until_stops_both_threads_at_the_gtid() {
    init_tracing();
    let (origin, replica) = tokio::join!(
        MariaDb::builder().name("origin").start(),
        MariaDb::builder().name("replica").start(),
    );
    let (origin, replica) = (origin.unwrap(), replica.unwrap());
    small_workload(&origin, 10).await;
    let source = Arc::new(MemorySource::new());
    sync_source(&origin, &source).await;
    let gtids: Vec<_> = binlog_transactions(&origin, &GtidPos::new())
        .await
        .iter()
        .map(|t| t.gtid())
        .collect();
    let stop_at = gtids[6];
    let handle = start_server(server_config("127.0.0.1:0"), &source).await;
    replica
        .exec(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, \
             MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', \
             MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos; \
             START SLAVE UNTIL master_gtid_pos='{stop_at}'",
            handle.local_addr().port()
        ))
        .await
        .unwrap();
    wait_until(
        "both replica threads to stop at the UNTIL position",
        Duration::from_secs(60),
        async || {
            let s = slave_status(&replica).await;
            s.get("Slave_IO_Running").map(String::as_str) == Some("No")
                && s.get("Slave_SQL_Running").map(String::as_str) == Some("No")
        },
        async || format!("{:?}", slave_status(&replica).await),
    )
    .await;
    let s = slave_status(&replica).await;
    assert_eq!(s["Last_IO_Errno"], "0", "{s:?}");
    assert_eq!(s["Last_SQL_Errno"], "0", "{s:?}");
    assert_eq!(replica.gtid_slave_pos().await.unwrap(), stop_at.to_string());
    // Then on to the end.
    replica.exec("START SLAVE").await.unwrap();
    wait_caught_up(&replica, &source.gtid_pos()).await;
    assert_same_tables(&origin, &replica, "m.t1").await;
    handle.shutdown().await;
}
