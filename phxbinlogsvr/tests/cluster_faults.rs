//! End to end under load and faults: the three-node cluster of
//! `cluster.rs` (harness in `common/mod.rs`: real `mariadbd` instances from
//! testkit, real `phxbinlogsvr` processes; node 1 the lossless semi-sync
//! master and lease holder, nodes 2 and 3 replicas of their own binlog
//! server).
//!
//! - 32 concurrent writers: every commit acknowledged, the replicas
//!   identical, no conflict anywhere;
//! - a replica's MariaDB stopped (cleanly / SIGKILL) while the master goes
//!   on: started again, it resumes from its GTID position;
//! - a replica node's binlog server SIGKILLed and restarted while a writer
//!   commits: its replica catches up, nothing applied twice;
//! - the master node's binlog server SIGKILLed and restarted while writers
//!   commit: the commits block, return once it is back, are on every node
//!   exactly once;
//! - bad input on a binlog port (garbage, truncated packets, a silent
//!   client, a flood of connections, a wrong password) and on a Paxos
//!   port: those connections are closed or refused, the process and the
//!   replica it serves carry on;
//! - a full disk (a small tmpfs mounted over the data directory; needs
//!   root), on a replica node and on the master node: that binlog server
//!   stops with an error naming the disk, acknowledges nothing it did not
//!   write, and with space freed recovers and catches up.
//!
//! Writers' transactions insert into a table with a primary key *and* one
//! without any key (`test.nokey`): a transaction applied twice on a replica
//! either stops its SQL thread (duplicate key) or shows as an extra row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Svr, TestCluster, assert_replica_healthy, assert_same_checksums, exec_within, metric,
    status_json, wait_master, wait_until,
};
use testkit::mysql_async::prelude::Queryable;
use testkit::mysql_async::{self, Conn};
use testkit::{MariaDb, REPL_PASSWORD, REPL_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const COMMIT: Duration = Duration::from_secs(20);

/// Runs `sql` (one autocommit statement or `BEGIN; ...; COMMIT`) and
/// expects it to return within 60 s; a deadlock (1213: the transaction
/// was rolled back whole) is retried. Returns the number of retries.
async fn commit_retrying(conn: &mut Conn, sql: &str) -> u32 {
    let mut retries = 0;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(60), conn.query_drop(sql))
            .await
            .unwrap_or_else(|_| panic!("commit did not return within 60 s: {sql}"));
        match r {
            Ok(()) => return retries,
            Err(mysql_async::Error::Server(e)) if e.code == 1213 && retries < 10 => {
                retries += 1;
                conn.query_drop("ROLLBACK").await.unwrap();
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// `SELECT COUNT(*) ...` on `db`.
async fn count(db: &MariaDb, sql: &str) -> i64 {
    db.query_one(sql).await.unwrap()
}

const WRITERS: u64 = 32;
const OPS: u64 = 50;

/// Writer `w`'s `i`-th transaction (ids `w * 1000 + i` are its own):
/// inserts (i % 5 in 0, 1), an update of its last insert (2), a hot-row
/// counter update shared with other writers (3), a delete of the row
/// inserted at i - 4 (4), which every 10th op is a multi-statement
/// transaction also writing the journal and the counter.
fn writer_op(w: u64, i: u64) -> String {
    let id = w * 1000 + i;
    match i % 5 {
        0 | 1 => format!("INSERT INTO test.items VALUES ({id}, {w}, 'writer {w} op {i}', {i})"),
        2 => format!(
            "UPDATE test.items SET n = n + 100, v = CONCAT(v, '+') WHERE id = {}",
            id - 1
        ),
        3 => format!("UPDATE test.counters SET n = n + 1 WHERE id = {}", w % 4),
        _ if i % 10 == 9 => format!(
            "BEGIN; INSERT INTO test.journal (writer, op, note) VALUES ({w}, {i}, 'tx'); \
             UPDATE test.counters SET n = n + 10 WHERE id = {}; \
             DELETE FROM test.items WHERE id = {}; COMMIT",
            w % 4,
            id - 4
        ),
        _ => format!("DELETE FROM test.items WHERE id = {}", id - 4),
    }
}

/// 32 tasks, each on its own connection to node 1, commit 50 transactions
/// each (autocommit inserts, updates, deletes over three tables, a hot row
/// shared by 8 writers, every 10th a multi-statement transaction). Every
/// commit returns (acknowledged: no async fallback), the replicas reach
/// node 1's position with identical tables, and no binlog server saw a
/// conflict or a rejected value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_writers_replicate_identically() {
    let t_start = Instant::now();
    let c = TestCluster::start("conc", &[]).await;
    let m1 = &c.dbs[0];
    let admin1 = c.ports[0].admin;
    for sql in [
        "CREATE TABLE test.items (id BIGINT PRIMARY KEY, writer INT NOT NULL, v VARCHAR(255), n BIGINT NOT NULL)",
        "CREATE TABLE test.counters (id INT PRIMARY KEY, n BIGINT NOT NULL)",
        "INSERT INTO test.counters VALUES (0, 0), (1, 0), (2, 0), (3, 0)",
        "CREATE TABLE test.journal (seq BIGINT AUTO_INCREMENT PRIMARY KEY, writer INT, op INT, note VARCHAR(32))",
    ] {
        exec_within(m1, sql, COMMIT).await;
    }
    let yes0 = m1.status_u64("Rpl_semi_sync_master_yes_tx").await.unwrap();
    let acked0 = metric(admin1, "phxbinlogsvr_semisync_transactions_acked_total").await;

    let t_writes = Instant::now();
    let tasks: Vec<JoinHandle<(u64, u32, Duration)>> = (0..WRITERS)
        .map(|w| {
            let db = Arc::clone(m1);
            tokio::spawn(async move {
                let mut conn = db.conn().await.unwrap();
                let (mut retries, mut slowest) = (0, Duration::ZERO);
                for i in 0..OPS {
                    let t0 = Instant::now();
                    retries += commit_retrying(&mut conn, &writer_op(w, i)).await;
                    slowest = slowest.max(t0.elapsed());
                }
                conn.disconnect().await.unwrap();
                (OPS, retries, slowest)
            })
        })
        .collect();
    let (mut commits, mut retries, mut slowest) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (n, r, s) = t.await.unwrap();
        commits += n;
        retries += r;
        slowest = slowest.max(s);
    }
    let took = t_writes.elapsed();
    eprintln!(
        "{commits} commits by {WRITERS} writers in {took:?} ({:.0}/s), slowest {slowest:?}, {retries} deadlock retries",
        commits as f64 / took.as_secs_f64()
    );
    assert_eq!(commits, WRITERS * OPS);

    // The master has what the writers did: 20 inserts and 10 deletes per
    // writer, 10 x 1 + 5 x 10 on the counters, 5 journal rows.
    assert_eq!(
        count(m1, "SELECT COUNT(*) FROM test.items").await,
        (WRITERS * 10) as i64
    );
    assert_eq!(
        count(m1, "SELECT CAST(SUM(n) AS SIGNED) FROM test.counters").await,
        (WRITERS * 60) as i64
    );
    assert_eq!(
        count(m1, "SELECT COUNT(*) FROM test.journal").await,
        (WRITERS * 5) as i64
    );

    // Every commit was acknowledged by our binlog server, none fell back
    // to asynchronous replication.
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0,
        "a commit was not acknowledged"
    );
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_clients").await.unwrap(),
        1
    );
    let yes = m1.status_u64("Rpl_semi_sync_master_yes_tx").await.unwrap() - yes0;
    assert!(yes >= commits, "Rpl_semi_sync_master_yes_tx +{yes}");
    let acked = metric(admin1, "phxbinlogsvr_semisync_transactions_acked_total").await - acked0;
    assert!(acked >= commits, "{acked} transactions acknowledged");

    // Replicas and stores converge; the tables are identical everywhere.
    let target = c.wait_replicas(Duration::from_secs(60)).await;
    c.wait_stores(&target).await;
    assert_same_checksums(&c.dbs, &["test.items", "test.counters", "test.journal"]).await;
    for db in &c.dbs[1..] {
        assert_replica_healthy(db).await;
        assert_eq!(db.gtid_slave_pos().await.unwrap(), target);
    }
    for name in [
        "phxbinlogsvr_semisync_proposals_conflict_total",
        "phxbinlogsvr_semisync_proposals_rejected_total",
    ] {
        assert_eq!(metric(admin1, name).await, 0, "{name} on node1");
    }
    for p in &c.ports {
        for name in [
            "phxbinlogsvr_store_conflicts_total",
            "phxbinlogsvr_store_rejected_total",
        ] {
            assert_eq!(metric(p.admin, name).await, 0, "{name}");
        }
    }
    eprintln!(
        "proposals {} for {} transactions; total {:?}",
        metric(admin1, "phxbinlogsvr_semisync_proposals_total").await,
        metric(admin1, "phxbinlogsvr_semisync_transactions_proposed_total").await,
        t_start.elapsed()
    );
}

/// Node 2's MariaDB stopped cleanly and node 3's SIGKILLed; the master
/// commits 30 more transactions meanwhile (still acknowledged: the binlog
/// servers are all up and store them). Started again, both replicas
/// reconnect to their binlog server and resume from their GTID position:
/// they reach the master's position with identical tables and no SQL
/// error (a replica starting over would fail on the existing table / keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_replica_resumes_from_its_gtid_position() {
    let t_start = Instant::now();
    let c = TestCluster::start("rstop", &[]).await;
    let m1 = &c.dbs[0];
    exec_within(
        m1,
        "CREATE TABLE test.t (id INT PRIMARY KEY, v VARCHAR(64), n BIGINT)",
        COMMIT,
    )
    .await;
    exec_within(
        m1,
        "CREATE TABLE test.nokey (id INT, v VARCHAR(64))",
        COMMIT,
    )
    .await;
    for i in 0..10 {
        exec_within(
            m1,
            &format!("INSERT INTO test.t VALUES ({i}, 'before {i}', {i}); INSERT INTO test.nokey VALUES ({i}, 'before')"),
            COMMIT,
        )
        .await;
    }
    let before = c.wait_replicas(Duration::from_secs(30)).await;
    let dumps_before = [
        metric(c.ports[1].admin, "phxbinlogsvr_master_dumps_started_total").await,
        metric(c.ports[2].admin, "phxbinlogsvr_master_dumps_started_total").await,
    ];

    c.dbs[1].stop().await.unwrap();
    c.dbs[2].kill9().await.unwrap();
    assert!(!c.dbs[1].is_running() && !c.dbs[2].is_running());

    // The master goes on without them.
    for i in 10..40 {
        let sql = match i % 3 {
            0 => format!(
                "BEGIN; INSERT INTO test.t VALUES ({i}, 'during {i}', {i}); \
                 UPDATE test.t SET n = n + 1 WHERE id = {}; INSERT INTO test.nokey VALUES ({i}, 'during'); COMMIT",
                i - 10
            ),
            1 => format!(
                "INSERT INTO test.t VALUES ({i}, 'during {i}', {i}); INSERT INTO test.nokey VALUES ({i}, 'during')"
            ),
            _ => format!(
                "UPDATE test.t SET v = CONCAT(v, '*') WHERE id = {}; DELETE FROM test.t WHERE id = {}",
                i - 1,
                i - 9
            ),
        };
        exec_within(m1, &sql, COMMIT).await;
    }
    let target = m1.gtid_binlog_pos().await.unwrap();
    assert_ne!(target, before);
    // Their binlog servers have it all before they come back.
    c.wait_stores(&target).await;

    let t_restart = Instant::now();
    let (r2, r3) = tokio::join!(c.dbs[1].start_again(), c.dbs[2].start_again());
    r2.unwrap();
    r3.unwrap();
    eprintln!("replicas restarted in {:?}", t_restart.elapsed());
    c.wait_replicas(Duration::from_secs(60)).await;
    eprintln!("caught up {:?} after the restart", t_restart.elapsed());

    assert_same_checksums(&c.dbs, &["test.t", "test.nokey"]).await;
    for db in &c.dbs[1..] {
        assert_replica_healthy(db).await;
        assert_eq!(db.gtid_slave_pos().await.unwrap(), target, "{}", db.name());
        assert_eq!(count(db, "SELECT COUNT(*) FROM test.nokey").await, 30);
    }
    // Each resumed through a new dump of its own binlog server.
    for (p, before) in c.ports[1..].iter().zip(dumps_before) {
        let now = metric(p.admin, "phxbinlogsvr_master_dumps_started_total").await;
        assert!(now > before, "dumps started {before} -> {now}");
    }
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0
    );
    eprintln!("total {:?}", t_start.elapsed());
}

/// Tables of the writers of the restart tests.
async fn create_seq_tables(m1: &MariaDb) {
    exec_within(
        m1,
        "CREATE TABLE test.seq (id BIGINT PRIMARY KEY, writer INT NOT NULL)",
        COMMIT,
    )
    .await;
    exec_within(
        m1,
        "CREATE TABLE test.nokey (id BIGINT NOT NULL, writer INT NOT NULL)",
        COMMIT,
    )
    .await;
}

/// What a writer did.
struct Written {
    commits: u64,
    slowest: Duration,
}

/// Writer `w` on its own connection: `BEGIN; INSERT seq; INSERT nokey;
/// COMMIT` with ids `w * 1_000_000 + i`, one after the other until `stop`
/// (the commit in flight then finishes); `done` counts returned commits.
/// A commit may take up to 60 s; any error fails the test.
fn spawn_writer(
    db: &Arc<MariaDb>,
    w: u64,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
) -> JoinHandle<Written> {
    let (db, stop, done) = (Arc::clone(db), Arc::clone(stop), Arc::clone(done));
    tokio::spawn(async move {
        let mut conn = db.conn().await.unwrap();
        let mut out = Written {
            commits: 0,
            slowest: Duration::ZERO,
        };
        while !stop.load(Ordering::SeqCst) {
            let id = w * 1_000_000 + out.commits;
            let sql = format!(
                "BEGIN; INSERT INTO test.seq VALUES ({id}, {w}); \
                 INSERT INTO test.nokey VALUES ({id}, {w}); COMMIT"
            );
            let t0 = Instant::now();
            tokio::time::timeout(Duration::from_secs(60), conn.query_drop(&sql))
                .await
                .unwrap_or_else(|_| panic!("writer {w}: commit {id} did not return within 60 s"))
                .unwrap_or_else(|e| panic!("writer {w}: commit {id}: {e}"));
            out.slowest = out.slowest.max(t0.elapsed());
            out.commits += 1;
            done.fetch_add(1, Ordering::SeqCst);
        }
        conn.disconnect().await.unwrap();
        out
    })
}

async fn wait_commits(done: &AtomicU64, at_least: u64, what: &str) {
    wait_until(what, Duration::from_secs(30), async || {
        done.load(Ordering::SeqCst) >= at_least
    })
    .await;
}

/// Every node holds exactly the `committed` rows of the writers, once:
/// as many rows as commits in the keyed and in the keyless table, no id
/// twice, the same checksums, replicas without SQL error.
async fn assert_each_commit_once(c: &TestCluster, committed: u64) {
    let target = c.wait_replicas(Duration::from_secs(60)).await;
    for db in &c.dbs {
        assert_eq!(
            count(db, "SELECT COUNT(*) FROM test.seq").await,
            committed as i64,
            "{}: rows of test.seq",
            db.name()
        );
        assert_eq!(
            count(db, "SELECT COUNT(*) FROM test.nokey").await,
            committed as i64,
            "{}: rows of test.nokey",
            db.name()
        );
        assert_eq!(
            count(db, "SELECT COUNT(DISTINCT id) FROM test.nokey").await,
            committed as i64,
            "{}: ids of test.nokey",
            db.name()
        );
    }
    for db in &c.dbs[1..] {
        assert_replica_healthy(db).await;
        assert_eq!(db.gtid_slave_pos().await.unwrap(), target, "{}", db.name());
    }
    assert_same_checksums(&c.dbs, &["test.seq", "test.nokey"]).await;
    c.wait_stores(&target).await;
}

/// No node's store refused a value (no compare-and-set conflict).
async fn assert_no_store_rejected(c: &TestCluster) {
    for p in &c.ports {
        assert_eq!(
            metric(p.admin, "phxbinlogsvr_store_rejected_total").await,
            0
        );
    }
}

/// The binlog server with admin port `admin` answers and streams to its
/// local replica.
async fn wait_serving(admin: u16, what: &str) {
    wait_until(what, Duration::from_secs(30), async || {
        status_json(admin).await.is_some()
            && metric(admin, "phxbinlogsvr_master_dumps_active").await == 1
    })
    .await;
}

/// Node 2's binlog server SIGKILLed while a writer commits on node 1;
/// 100 commits go on without it (nodes 1 and 3 are a majority); restarted,
/// it catches up through Paxos, node 2's MariaDB reconnects and catches
/// up; every commit is on every node exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_nodes_binlog_server_restarts_mid_stream() {
    let t_start = Instant::now();
    let mut c = TestCluster::start("rsvr", &[]).await;
    let m1 = Arc::clone(&c.dbs[0]);
    create_seq_tables(&m1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(&m1, 1, &stop, &done);

    wait_commits(&done, 30, "30 commits").await;
    c.svrs[1].kill();
    let at_kill = done.load(Ordering::SeqCst);
    eprintln!("node2's binlog server killed after {at_kill} commits");
    wait_commits(
        &done,
        at_kill + 100,
        "100 commits without node2's binlog server",
    )
    .await;
    c.svrs[1].start();
    let at_restart = done.load(Ordering::SeqCst);
    eprintln!("node2's binlog server restarted after {at_restart} commits");
    let n2 = c.ports[1].admin;
    wait_serving(
        n2,
        "node2's binlog server to answer and serve its replica again",
    )
    .await;
    wait_commits(&done, at_restart + 30, "30 commits after the restart").await;
    stop.store(true, Ordering::SeqCst);
    let w = writer.await.unwrap();
    eprintln!(
        "{} commits, slowest {:?}, in {:?}",
        w.commits,
        w.slowest,
        t_start.elapsed()
    );
    assert_eq!(w.commits, done.load(Ordering::SeqCst));

    assert_each_commit_once(&c, w.commits).await;
    assert!(c.svrs[1].is_running(), "node2's binlog server exited");
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0
    );
    eprintln!("total {:?}", t_start.elapsed());
}

/// Node 1's binlog server (the semi-sync replica of the master and the
/// lease holder) SIGKILLed while 4 writers commit: no commit returns while
/// it is down; restarted, it takes the lease again, the commits that were
/// waiting return (each writer had one blocked across the outage), later
/// ones flow, and every commit is on every node exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_master_nodes_binlog_server_restarts_mid_stream() {
    let t_start = Instant::now();
    let mut c = TestCluster::start("msvr", &[]).await;
    let m1 = Arc::clone(&c.dbs[0]);
    create_seq_tables(&m1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<JoinHandle<Written>> = (1..=4)
        .map(|w| spawn_writer(&m1, w, &stop, &done))
        .collect();

    wait_commits(&done, 40, "40 commits").await;
    c.svrs[0].kill();
    let t_kill = Instant::now();
    eprintln!(
        "node1's binlog server killed after {} commits",
        done.load(Ordering::SeqCst)
    );
    wait_until(
        "node1's MariaDB to lose its semi-sync replica",
        Duration::from_secs(10),
        async || m1.status_u64("Rpl_semi_sync_master_clients").await.unwrap() == 0,
    )
    .await;
    // No commit may return while nothing acknowledges. A commit whose ACK
    // arrived just before the kill may still be returning: allow 1 s, then
    // watch 3 s of silence (checking that nothing happens takes time).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet_from = done.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet_to = done.load(Ordering::SeqCst);
    assert_eq!(
        quiet_from, quiet_to,
        "commits returned while node1's binlog server was down"
    );
    assert!(writers.iter().all(|w| !w.is_finished()));

    c.svrs[0].start();
    let t_restart = Instant::now();
    wait_master(
        c.ports[0].admin,
        "node1 to hold the lease after its restart",
    )
    .await;
    wait_commits(&done, quiet_to + 1, "a waiting commit to return").await;
    eprintln!(
        "down {:?}; the first waiting commit returned {:?} after the restart",
        t_restart - t_kill,
        t_restart.elapsed()
    );
    wait_commits(&done, quiet_to + 40, "40 commits after the restart").await;
    stop.store(true, Ordering::SeqCst);
    let mut committed = 0;
    for (i, w) in writers.into_iter().enumerate() {
        let w = w.await.unwrap();
        eprintln!(
            "writer {}: {} commits, slowest {:?}",
            i + 1,
            w.commits,
            w.slowest
        );
        assert!(
            w.slowest >= Duration::from_secs(3),
            "writer {}: no commit waited through the outage ({:?})",
            i + 1,
            w.slowest
        );
        committed += w.commits;
    }
    assert_eq!(committed, done.load(Ordering::SeqCst));

    assert_each_commit_once(&c, committed).await;
    let admin1 = c.ports[0].admin;
    let known = metric(
        admin1,
        "phxbinlogsvr_semisync_transactions_acked_known_total",
    )
    .await;
    eprintln!(
        "restarted node1: {known} known transactions re-acknowledged, {} conflicts, {} proposals",
        metric(admin1, "phxbinlogsvr_semisync_proposals_conflict_total").await,
        metric(admin1, "phxbinlogsvr_semisync_proposals_total").await,
    );
    assert!(
        known >= 1,
        "the first dump re-reads the last chosen transaction"
    );
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0,
        "a commit fell back to asynchronous replication"
    );
    assert_no_store_rejected(&c).await;
    eprintln!("total {:?}", t_start.elapsed());
}

// ----- bad input -----

/// Reads until the server closes the connection; panics if it is still
/// open after `within`. Returns what the server sent.
async fn closed_by_server(mut s: TcpStream, within: Duration, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("{what}: the server kept the connection open for {within:?}"),
        }
    }
}

/// One MySQL packet (payload of at most 16 MiB - 1).
async fn read_packet(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0; len];
    s.read_exact(&mut p).await?;
    Ok(p)
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
    let mut p = vec![len[0], len[1], len[2], seq];
    p.extend_from_slice(payload);
    p
}

/// (code, message) of an ERR packet.
fn err_of(p: &[u8]) -> (u16, String) {
    assert_eq!(p[0], 0xff, "not an ERR packet: {p:?}");
    (
        u16::from_le_bytes([p[1], p[2]]),
        String::from_utf8_lossy(&p[9..]).into_owned(),
    )
}

/// Logs in with `mysql_native_password` by hand: the connection, ready for
/// commands, or the ERR (code, message).
async fn raw_login(port: u16, user: &str, password: &str) -> Result<TcpStream, (u16, String)> {
    use mysql_common::constants::CapabilityFlags;
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
    use mysql_common::proto::MySerialize;
    use mysql_common::scramble::scramble_native;

    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let greeting = read_packet(&mut s).await.unwrap();
    if greeting[0] == 0xff {
        return Err(err_of(&greeting));
    }
    let hs: HandshakePacket<'_> = ParseBuf(&greeting).parse(()).unwrap();
    let auth = scramble_native(&hs.nonce(), password.as_bytes()).map_or(vec![], |a| a.to_vec());
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_TRANSACTIONS;
    let resp = HandshakeResponse::new(
        Some(auth),
        (10, 11, 0),
        Some(user.as_bytes()),
        None::<&[u8]>,
        Some(AuthPlugin::MysqlNativePassword),
        caps,
        None,
        16 << 20,
    );
    let mut buf = Vec::new();
    resp.serialize(&mut buf);
    s.write_all(&packet(1, &buf)).await.unwrap();
    let reply = read_packet(&mut s).await.unwrap();
    match reply[0] {
        0x00 => Ok(s),
        0xff => Err(err_of(&reply)),
        other => panic!("unexpected reply to the login: {other:#x}"),
    }
}

/// A Paxos transport frame (`body_len | cluster_id | from | crc32 | payload`,
/// see `paxos::transport::frame`) with a correct checksum.
fn paxos_frame(cluster_id: u64, from: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&cluster_id.to_le_bytes());
    h.update(&from.to_le_bytes());
    h.update(payload);
    let body_len = u32::try_from(20 + payload.len()).unwrap();
    let mut f = body_len.to_le_bytes().to_vec();
    f.extend_from_slice(&cluster_id.to_le_bytes());
    f.extend_from_slice(&from.to_le_bytes());
    f.extend_from_slice(&h.finalize().to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Bytes that are no protocol at all.
fn garbage(n: u32, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Bad clients on node 2's binlog port, which serves node 2's replica:
/// each is closed (or refused) and counted, the replica's own connection
/// is untouched and keeps streaming, the process stays up. Then garbage on
/// node 1's Paxos port: closed, counted, node 1 keeps the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_closed_and_replication_goes_on() {
    let t_start = Instant::now();
    let mut c = TestCluster::start("badin", &[]).await;
    eprintln!("cluster up after {:?}", t_start.elapsed());
    let m1 = Arc::clone(&c.dbs[0]);
    exec_within(
        &m1,
        "CREATE TABLE test.t (id INT PRIMARY KEY, v VARCHAR(64))",
        COMMIT,
    )
    .await;
    exec_within(&m1, "INSERT INTO test.t VALUES (1, 'before')", COMMIT).await;
    c.wait_replicas(Duration::from_secs(30)).await;
    let (port, admin) = (c.ports[1].binlog, c.ports[1].admin);
    let m = async |name: &str| metric(admin, &format!("phxbinlogsvr_master_{name}")).await;
    assert_eq!(m("connections_active").await, 1, "node2's replica");
    let dumps0 = m("dumps_started_total").await;
    let auth0 = m("auth_failures_total").await;
    let proto0 = m("protocol_errors_total").await;
    let quick = Duration::from_secs(5);

    // Slow ones first, in the background: the handshake timeout (10 s)
    // closes them. A silent client, and a header announcing 16 MiB - 1
    // bytes that never come.
    let silent = tokio::spawn(async move {
        let t0 = Instant::now();
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let got = closed_by_server(s, Duration::from_secs(20), "silent client").await;
        eprintln!("the silent client was closed after {:?}", t0.elapsed());
        got
    });
    let huge = tokio::spawn(async move {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&[0xff, 0xff, 0xff, 1]).await.unwrap();
        s.write_all(&garbage(1000, 7)).await.unwrap();
        let got = closed_by_server(s, Duration::from_secs(20), "16 MiB announced").await;
        eprintln!("the 16 MiB client was closed after {:?}", t0.elapsed());
        got
    });

    // 1. Raw garbage after the greeting, then the client hangs up its
    //    sending side.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&garbage(300, 1)).await.unwrap();
    s.shutdown().await.unwrap();
    closed_by_server(s, quick, "raw garbage").await;
    // 2. A well-framed login packet full of garbage: refused at once.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&packet(1, &garbage(300, 2))).await.unwrap();
    closed_by_server(s, quick, "garbage login packet").await;
    // 3. Not even MySQL: HTTP, and the client is gone at once.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(s);
    // 4. A truncated packet: the header promises 200 bytes, 20 come, then
    //    the half-close.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&[200, 0, 0, 1]).await.unwrap();
    s.write_all(&[0x8d; 20]).await.unwrap();
    s.shutdown().await.unwrap();
    closed_by_server(s, quick, "truncated login packet").await;
    // 5. Logged in properly, then a truncated command packet.
    let mut s = raw_login(port, REPL_USER, REPL_PASSWORD).await.unwrap();
    s.write_all(&[100, 0, 0, 0, 0x03, b'S', b'E', b'L'])
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    closed_by_server(s, quick, "truncated command").await;
    // 6. Logged in: an unknown command is answered with ERR 1047 and the
    //    connection stays usable; an empty command packet closes it.
    let mut s = raw_login(port, REPL_USER, REPL_PASSWORD).await.unwrap();
    s.write_all(&packet(0, &[0xee, 1, 2, 3])).await.unwrap();
    let (code, msg) = err_of(&read_packet(&mut s).await.unwrap());
    assert_eq!(code, 1047, "{msg}");
    s.write_all(&packet(0, &[0x0e])).await.unwrap(); // COM_PING
    assert_eq!(read_packet(&mut s).await.unwrap()[0], 0x00, "OK to a ping");
    s.write_all(&packet(0, &[])).await.unwrap();
    closed_by_server(s, quick, "empty command packet").await;
    // 7. A short COM_REGISTER_SLAVE and a short COM_BINLOG_DUMP.
    for cmd in [&[0x15u8, 1][..], &[0x12, 4, 0, 0]] {
        let mut s = raw_login(port, REPL_USER, REPL_PASSWORD).await.unwrap();
        s.write_all(&packet(0, cmd)).await.unwrap();
        closed_by_server(s, quick, "short replication command").await;
    }
    // 8. The replication user with a wrong password: ERR 1045, with
    //    mysql_async as with the raw client.
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(REPL_USER))
        .pass(Some("not-the-password"))
        .prefer_socket(false);
    match Conn::new(opts).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1045, "{e}");
            assert!(e.message.contains("Access denied"), "{e}");
        }
        other => panic!("expected ERR 1045, got {other:?}"),
    }
    let (code, msg) = raw_login(port, REPL_USER, "wrong").await.err().unwrap();
    assert_eq!(code, 1045, "{msg}");
    let (code, msg) = raw_login(port, "root", "").await.err().unwrap();
    assert_eq!(code, 1045, "{msg}");

    let (silent, huge) = (silent.await.unwrap(), huge.await.unwrap());
    assert!(!silent.is_empty(), "the silent client got a greeting");
    assert!(!huge.is_empty(), "the 16 MiB client got a greeting");
    eprintln!("bad clients done after {:?}", t_start.elapsed());
    // Ten bad clients, of which only the HTTP one and the truncated
    // command may count as i/o errors (a socket closed mid-packet).
    let proto = m("protocol_errors_total").await - proto0;
    eprintln!("{proto} protocol errors counted");
    assert!(proto >= 8, "{proto} protocol errors counted");

    // 9. A flood: 70 connections that say nothing. 64 slots, one is the
    //    replica's: 63 get a greeting, the rest ERR 1040 at once.
    wait_until(
        "only the replica's connection left",
        Duration::from_secs(10),
        async || m("connections_active").await == 1,
    )
    .await;
    let mut flood = Vec::new();
    let (mut greeted, mut refused) = (0, 0);
    for _ in 0..70 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let first = tokio::time::timeout(quick, read_packet(&mut s))
            .await
            .expect("a greeting or an ERR")
            .unwrap();
        if first[0] == 0xff {
            assert_eq!(err_of(&first).0, 1040);
            refused += 1;
        } else {
            greeted += 1;
        }
        flood.push(s);
    }
    assert_eq!((greeted, refused), (63, 7));
    drop(flood);
    wait_until(
        "the flood's connections closed",
        Duration::from_secs(10),
        async || m("connections_active").await == 1,
    )
    .await;

    // The replica never noticed: the same dump, no new one, and it streams.
    assert!(c.svrs[1].is_running(), "node2's binlog server exited");
    assert_eq!(m("dumps_started_total").await, dumps0);
    assert_eq!(m("dumps_active").await, 1);
    assert_eq!(m("auth_failures_total").await, auth0 + 3);
    assert_eq!(m("connections_refused_total").await, 7);

    // Bad frames on node 1's Paxos port (the lease holder's): each
    // connection closed and counted; node 1 keeps the lease and its
    // followers. Random bytes (an absurd length), a frame whose checksum
    // does not match, one cut short by a half-close, and a well-formed one
    // of another cluster.
    let admin1 = c.ports[0].admin;
    let malformed0 = metric(admin1, "phxbinlogsvr_transport_malformed_frames_total").await;
    let foreign0 = metric(
        admin1,
        "phxbinlogsvr_transport_dropped_foreign_cluster_total",
    )
    .await;
    let mut bad_crc = paxos_frame(4242, 2, &garbage(64, 3));
    bad_crc[20] ^= 0x55; // bytes 20..24: the crc32
    let mut truncated = paxos_frame(4242, 2, &garbage(1000, 4));
    truncated.truncate(300);
    for (what, bytes) in [
        ("random bytes", garbage(500, 100)),
        ("a bad checksum", bad_crc),
        ("a truncated frame", truncated),
        ("another cluster", paxos_frame(777, 2, &garbage(64, 5))),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", c.ports[0].paxos))
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
        s.shutdown().await.unwrap();
        closed_by_server(s, quick, &format!("Paxos port: {what}")).await;
    }
    wait_until(
        "the bad frames counted",
        Duration::from_secs(5),
        async || {
            metric(admin1, "phxbinlogsvr_transport_malformed_frames_total").await == malformed0 + 3
                && metric(
                    admin1,
                    "phxbinlogsvr_transport_dropped_foreign_cluster_total",
                )
                .await
                    == foreign0 + 1
        },
    )
    .await;

    for i in 0..5 {
        exec_within(
            &m1,
            &format!("INSERT INTO test.t VALUES ({}, 'after')", 10 + i),
            COMMIT,
        )
        .await;
    }
    c.wait_replicas(Duration::from_secs(30)).await;
    assert_same_checksums(&c.dbs, &["test.t"]).await;
    for db in &c.dbs[1..] {
        assert_replica_healthy(db).await;
        assert_eq!(count(db, "SELECT COUNT(*) FROM test.t").await, 6);
    }
    assert_eq!(m("dumps_started_total").await, dumps0);
    for (i, svr) in c.svrs.iter_mut().enumerate() {
        assert!(svr.is_running(), "node{}'s binlog server exited", i + 1);
    }
    let s1 = status_json(admin1).await.expect("node1 answers");
    assert_eq!(s1["is_master"], true, "{s1}");
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0
    );
    eprintln!("total {:?}", t_start.elapsed());
}

// ----- a full disk -----

/// A tmpfs of limited size mounted over a directory (its files copied in
/// first): a disk that fills up. Unmounted (lazily) on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Over `dir`, with `spare` bytes free beyond what `dir` holds now.
    fn over(dir: &Path, spare: u64) -> SmallDisk {
        let used = dir_bytes(dir);
        let before = dir.with_extension("before-tmpfs");
        std::fs::rename(dir, &before).unwrap();
        std::fs::create_dir(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}", used + spare),
                "tmpfs",
                &dir.display().to_string(),
            ],
            "mount -t tmpfs (needs root)",
        );
        let disk = SmallDisk { dir: dir.into() };
        run(
            "cp",
            &[
                "-a",
                &format!("{}/.", before.display()),
                &dir.display().to_string(),
            ],
            "copying the data directory onto the tmpfs",
        );
        disk
    }

    /// Makes it `bytes` large (the operator freeing space).
    fn grow(&self, bytes: u64) {
        run(
            "mount",
            &[
                "-o",
                &format!("remount,size={bytes}"),
                &self.dir.display().to_string(),
            ],
            "mount -o remount",
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn run(cmd: &str, args: &[&str], what: &str) {
    let ok = std::process::Command::new(cmd)
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{what}: {cmd} {args:?} failed");
}

/// Bytes the files under `dir` occupy, in whole pages.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            total += 4096 + dir_bytes(&e.path());
        } else {
            total += meta.len().div_ceil(4096) * 4096;
        }
    }
    total
}

const BLOB_BYTES: usize = 256 * 1024;

async fn create_blob_table(m1: &MariaDb) {
    exec_within(
        m1,
        "CREATE TABLE test.blob (id INT PRIMARY KEY, b LONGBLOB NOT NULL)",
        COMMIT,
    )
    .await;
}

/// Every node holds the `blobs` rows of `test.blob`, identical.
async fn assert_blobs_everywhere(c: &TestCluster, blobs: u64) {
    for db in &c.dbs {
        assert_eq!(
            count(db, "SELECT COUNT(*) FROM test.blob").await,
            blobs as i64,
            "{}: rows of test.blob",
            db.name()
        );
    }
    assert_same_checksums(&c.dbs, &["test.blob"]).await;
}

/// Inserts 256 KiB rows into `test.blob` one after the other from id
/// `from`, each commit allowed 60 s, until `stop`; returns how many
/// committed.
fn spawn_filler(db: &Arc<MariaDb>, from: u64, stop: &Arc<AtomicBool>) -> JoinHandle<u64> {
    let (db, stop) = (Arc::clone(db), Arc::clone(stop));
    tokio::spawn(async move {
        let mut conn = db.conn().await.unwrap();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let sql = format!(
                "INSERT INTO test.blob VALUES ({}, REPEAT('x', {BLOB_BYTES}))",
                from + n
            );
            tokio::time::timeout(Duration::from_secs(60), conn.query_drop(&sql))
                .await
                .unwrap_or_else(|_| panic!("blob {} did not commit within 60 s", from + n))
                .unwrap_or_else(|e| panic!("blob {}: {e}", from + n));
            n += 1;
        }
        conn.disconnect().await.unwrap();
        n
    })
}

/// The node's binlog server stopped on the full disk, and its last word
/// (the error it exits with) says so.
fn assert_stopped_on_full_disk(svr: &Svr) {
    let log = svr.log_text();
    let exit = log
        .lines()
        .rfind(|l| l.starts_with("phxbinlogsvr: "))
        .unwrap_or_else(|| panic!("{}: no exit error in its log", svr.name));
    eprintln!("{}: {exit}", svr.name);
    assert!(
        exit.contains("No space left on device"),
        "{}: the exit error does not name the full disk: {exit}",
        svr.name
    );
}

/// Node 2's data directory fills up while the master commits: node 2's
/// binlog server stops with an error naming the full disk (it must not go
/// on with a log it could not write, nor corrupt it); nodes 1 and 3 go on
/// committing; with space freed it restarts, recovers its log and store,
/// catches up, and every commit is on every node exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_node_whose_disk_fills_up_stops_and_recovers() {
    let t_start = Instant::now();
    let mut c = TestCluster::start("rdisk", &[]).await;
    let m1 = Arc::clone(&c.dbs[0]);
    create_seq_tables(&m1).await;
    create_blob_table(&m1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(&m1, 1, &stop, &done);
    wait_commits(&done, 20, "20 commits").await;

    c.svrs[1].kill();
    let disk = SmallDisk::over(&c.data_dir(2), 4 << 20);
    c.svrs[1].start();
    let n2 = c.ports[1].admin;
    wait_serving(
        n2,
        "node2's binlog server to serve its replica from the small disk",
    )
    .await;

    let stop_filler = Arc::new(AtomicBool::new(false));
    let filler = spawn_filler(&m1, 0, &stop_filler);
    wait_until(
        "node2's binlog server to stop on its full disk",
        Duration::from_secs(60),
        async || !c.svrs[1].is_running(),
    )
    .await;
    assert_stopped_on_full_disk(&c.svrs[1]);
    // Nodes 1 and 3 are a majority: commits go on.
    let at_stop = done.load(Ordering::SeqCst);
    wait_commits(&done, at_stop + 30, "30 commits without node2").await;
    stop_filler.store(true, Ordering::SeqCst);
    let blobs = filler.await.unwrap();
    eprintln!("node2 stopped; {blobs} blobs of 256 KiB committed");

    disk.grow(512 << 20);
    c.svrs[1].start();
    wait_serving(
        n2,
        "node2's binlog server to start again and serve its replica",
    )
    .await;
    let at_restart = done.load(Ordering::SeqCst);
    wait_commits(&done, at_restart + 20, "20 commits after the restart").await;
    stop.store(true, Ordering::SeqCst);
    let w = writer.await.unwrap();
    assert_eq!(w.commits, done.load(Ordering::SeqCst));

    assert_each_commit_once(&c, w.commits).await;
    assert_blobs_everywhere(&c, blobs).await;
    assert!(c.svrs[1].is_running(), "node2's binlog server exited again");
    assert_no_store_rejected(&c).await;
    eprintln!("total {:?}", t_start.elapsed());
}

/// The master node's data directory fills up: its binlog server stops,
/// and no commit returns (nothing can acknowledge it); with space freed it
/// restarts, takes the lease again, the waiting commits return, and every
/// commit is on every node exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_master_node_whose_disk_fills_up_stops_and_acknowledges_nothing() {
    let t_start = Instant::now();
    let mut c = TestCluster::start("mdisk", &[]).await;
    let m1 = Arc::clone(&c.dbs[0]);
    create_seq_tables(&m1).await;
    create_blob_table(&m1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(&m1, 1, &stop, &done);
    wait_commits(&done, 20, "20 commits").await;

    c.svrs[0].kill();
    let disk = SmallDisk::over(&c.data_dir(1), 4 << 20);
    c.svrs[0].start();
    wait_master(c.ports[0].admin, "node1 to hold the lease again").await;
    let at_start = done.load(Ordering::SeqCst);
    wait_commits(&done, at_start + 10, "10 commits from the small disk").await;

    let stop_filler = Arc::new(AtomicBool::new(false));
    let filler = spawn_filler(&m1, 0, &stop_filler);
    wait_until(
        "node1's binlog server to stop on its full disk",
        Duration::from_secs(60),
        async || !c.svrs[0].is_running(),
    )
    .await;
    assert_stopped_on_full_disk(&c.svrs[0]);
    // Nothing acknowledges now. A commit whose ACK left just before the
    // stop may still be returning: allow 1 s, then watch 3 s of silence.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet_from = done.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        quiet_from,
        done.load(Ordering::SeqCst),
        "commits returned while node1's binlog server was stopped"
    );
    assert!(!writer.is_finished() && !filler.is_finished());

    disk.grow(512 << 20);
    stop_filler.store(true, Ordering::SeqCst);
    c.svrs[0].start();
    wait_master(
        c.ports[0].admin,
        "node1 to hold the lease after space was freed",
    )
    .await;
    wait_commits(&done, quiet_from + 20, "20 commits after the restart").await;
    stop.store(true, Ordering::SeqCst);
    let w = writer.await.unwrap();
    let blobs = filler.await.unwrap();
    eprintln!("{} commits, {blobs} blobs of 256 KiB", w.commits);
    assert!(
        w.slowest >= Duration::from_secs(3),
        "no commit waited through the stop ({:?})",
        w.slowest
    );
    assert_eq!(w.commits, done.load(Ordering::SeqCst));

    assert_each_commit_once(&c, w.commits).await;
    assert_blobs_everywhere(&c, blobs).await;
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0,
        "a commit fell back to asynchronous replication"
    );
    assert_no_store_rejected(&c).await;
    eprintln!("total {:?}", t_start.elapsed());
}
