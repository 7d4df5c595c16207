//! End to end: three nodes on loopback, each a real `mariadbd` (testkit)
//! and a `phxbinlogsvr` process.
//!
//! - node 1's MariaDB is a lossless semi-sync master (AFTER_SYNC, no
//!   fallback); nodes 2 and 3 start in replica mode and replicate from
//!   their own binlog server (`127.0.0.1:<binlog_port>`,
//!   `MASTER_USE_GTID=slave_pos`);
//! - node 1's binlog server is made the lease holder by starting nodes 2
//!   and 3 with `--no-campaign` (they vote and follow but never campaign;
//!   the agent will decide this properly);
//! - every commit on node 1 returns only after its transaction was chosen
//!   through Paxos and acknowledged; both replicas reach node 1's
//!   `gtid_binlog_pos` and `CHECKSUM TABLE` agrees on all three;
//! - lossless: with 2 of 3 binlog servers killed, a commit does not return
//!   until one comes back.
//! - large transactions: one over the per-value limit is split into parts
//!   and still committed, replicated and checksummed as one unit, also when
//!   the master's binlog server is killed midway (the 256 MiB case is
//!   `#[ignore]`d: `-- --ignored`).
//!
//! The harness is in `common/mod.rs` (shared with `cluster_faults.rs`, the
//! fault tests). `RUST_LOG` is passed to the binlog servers; their logs are
//! printed when the test fails (`PHX_TEST_LOGS=1`: always).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestCluster, checksum, exec_within, http_get, metric, status_json, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_through_paxos_and_commits_wait_for_a_majority() {
    let t_start = Instant::now();
    let c = TestCluster::start("e2e", &[]).await;
    let (dbs, ports) = (&c.dbs, &c.ports);
    let mut svrs = c.svrs;

    // Writes: each commit returns only once chosen and acknowledged.
    let commit = Duration::from_secs(20);
    let m1 = &dbs[0];
    let t_writes = Instant::now();
    exec_within(
        m1,
        "CREATE TABLE test.t (id INT PRIMARY KEY, v VARCHAR(64), n BIGINT)",
        commit,
    )
    .await;
    for i in 0..20 {
        exec_within(
            m1,
            &format!("INSERT INTO test.t VALUES ({i}, 'row {i}', {})", i * i),
            commit,
        )
        .await;
    }
    exec_within(
        m1,
        "INSERT INTO test.t VALUES (100, 'a', 1), (101, 'b', 2), (102, 'c', 3)",
        commit,
    )
    .await;
    exec_within(
        m1,
        "UPDATE test.t SET v = CONCAT(v, '!'), n = n + 7 WHERE id % 3 = 0",
        commit,
    )
    .await;
    exec_within(m1, "DELETE FROM test.t WHERE id IN (4, 5, 101)", commit).await;
    exec_within(
        m1,
        "BEGIN; INSERT INTO test.t VALUES (200, 'multi', 0); UPDATE test.t SET n = 0 WHERE id = 1; COMMIT",
        commit,
    )
    .await;
    // Bigger than one batch's cap (4 MiB): proposed alone.
    exec_within(
        m1,
        "CREATE TABLE test.big (id INT PRIMARY KEY, b LONGBLOB)",
        commit,
    )
    .await;
    exec_within(
        m1,
        "INSERT INTO test.big VALUES (1, REPEAT('x', 6 * 1024 * 1024))",
        commit,
    )
    .await;
    eprintln!("writes took {:?}", t_writes.elapsed());
    // They really went through semi-sync: our binlog server is the one
    // semi-sync client, every commit got an ACK, none fell back to async.
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_clients").await.unwrap(),
        1
    );
    assert!(m1.status_u64("Rpl_semi_sync_master_yes_tx").await.unwrap() >= 27);
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0
    );

    // Replicas converge.
    let target = m1.gtid_binlog_pos().await.unwrap();
    eprintln!("node1 gtid_binlog_pos = {target}");
    for db in &dbs[1..] {
        db.wait_for_gtid(&target, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} did not reach {target}: {e}\n{}",
                    db.name(),
                    db.error_log_tail(30)
                )
            });
    }
    let sums = [
        checksum(&dbs[0]).await,
        checksum(&dbs[1]).await,
        checksum(&dbs[2]).await,
    ];
    assert_eq!(sums[0], sums[1], "CHECKSUM TABLE node1 vs node2");
    assert_eq!(sums[0], sums[2], "CHECKSUM TABLE node1 vs node3");
    let big =
        "SELECT CONCAT(COUNT(*), ':', SUM(LENGTH(b)), ':', MD5(GROUP_CONCAT(b))) FROM test.big";
    let big0: String = dbs[0].query_one(big).await.unwrap();
    assert_eq!(big0, dbs[1].query_one::<String>(big).await.unwrap());
    assert_eq!(big0, dbs[2].query_one::<String>(big).await.unwrap());
    let count: i64 = dbs[2]
        .query_one("SELECT COUNT(*) FROM test.t")
        .await
        .unwrap();
    assert_eq!(count, 21);

    // Admin API.
    for p in ports {
        let s = status_json(p.admin).await.expect("status");
        assert_eq!(s["store"]["last_gtid_pos"], target.as_str(), "{s}");
        assert!(s["paxos"]["chosen_prefix"].as_u64().unwrap() > 0, "{s}");
        assert!(s["mariadb"]["gtid_current_pos"].is_string(), "{s}");
        eprintln!("GET /status on {}: {s}", s["node"]);
    }
    let (code, metrics) = http_get(ports[0].admin, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let acked = metrics
        .lines()
        .find(|l| l.starts_with("phxbinlogsvr_semisync_transactions_acked_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("acked counter in /metrics");
    assert!(acked >= 27, "acked {acked}\n{metrics}");
    assert!(metrics.contains("phxbinlogsvr_paxos_lease_acquired_total{"));
    assert!(metrics.contains("phxbinlogsvr_transport_frames_sent_total{"));
    let (code, master) = http_get(ports[1].admin, "/master").await.unwrap();
    assert_eq!(code, 200);
    assert!(master.contains("\"master\":1"), "{master}");
    let (code, members) = http_get(ports[2].admin, "/members").await.unwrap();
    assert_eq!(code, 200);
    assert!(members.contains("node3"), "{members}");
    let (code, _) = http_get(ports[1].admin, "/metrics").await.unwrap();
    assert_eq!(code, 200);

    // Lossless: with 2 of 3 binlog servers gone, a commit waits.
    svrs[1].kill();
    svrs[2].kill();
    // Let node 1's lease run out (2 s lease) so the dump is dropped first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = Arc::clone(m1);
    let t_wait = Instant::now();
    let pending = tokio::spawn(async move {
        db.exec("INSERT INTO test.t VALUES (300, 'while the majority is down', 1)")
            .await
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !pending.is_finished(),
        "a commit returned without a majority"
    );
    let s1 = status_json(ports[0].admin).await.expect("status of node1");
    assert_eq!(
        s1["is_master"], false,
        "node1 kept the lease without a majority: {s1}"
    );
    svrs[1].start();
    tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the waiting commit returned once a majority was back")
        .unwrap()
        .unwrap();
    eprintln!(
        "the waiting commit returned after {:?} (node2 restarted at 4 s)",
        t_wait.elapsed()
    );
    let target = m1.gtid_binlog_pos().await.unwrap();
    dbs[1]
        .wait_for_gtid(&target, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(checksum(&dbs[0]).await, checksum(&dbs[1]).await);
    // Node 3 comes back and catches up too.
    svrs[2].start();
    dbs[2]
        .wait_for_gtid(&target, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(checksum(&dbs[0]).await, checksum(&dbs[2]).await);

    // Again, but the commit races the failure: the two servers die while
    // node 1 still holds the lease, so the transaction is read and
    // proposed, and the proposal cannot be chosen. Still no commit until a
    // majority is back; then the same transaction is chosen exactly once.
    wait_until(
        "node1 to hold the lease again",
        Duration::from_secs(30),
        async || {
            status_json(ports[0].admin)
                .await
                .is_some_and(|s| s["is_master"] == true)
        },
    )
    .await;
    svrs[1].kill();
    svrs[2].kill();
    let db = Arc::clone(m1);
    let t_wait = Instant::now();
    let pending = tokio::spawn(async move {
        db.exec("UPDATE test.t SET n = n + 1000 WHERE id = 300")
            .await
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !pending.is_finished(),
        "a commit returned without a majority"
    );
    svrs[2].start();
    tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the waiting commit returned once a majority was back")
        .unwrap()
        .unwrap();
    eprintln!(
        "the racing commit returned after {:?} (node3 restarted at 4 s)",
        t_wait.elapsed()
    );
    svrs[1].start();
    let target = m1.gtid_binlog_pos().await.unwrap();
    for db in &dbs[1..] {
        db.wait_for_gtid(&target, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let sum = checksum(&dbs[0]).await;
    assert_eq!(sum, checksum(&dbs[1]).await);
    assert_eq!(sum, checksum(&dbs[2]).await);
    for p in ports {
        wait_until(
            "every store at node1's position",
            Duration::from_secs(30),
            async || {
                status_json(p.admin)
                    .await
                    .is_some_and(|s| s["store"]["last_gtid_pos"] == target.as_str())
            },
        )
        .await;
    }

    // Node 1's binlog server restarts (SIGKILL): it takes the lease again,
    // its first dump starts one transaction before the store's end, so it
    // re-reads the last chosen transaction and ACKs it without proposing
    // (what releases a commit left waiting by a crash between the choice
    // and the ACK), then commits flow again.
    svrs[0].kill();
    svrs[0].start();
    wait_until(
        "node1 to hold the lease after its restart",
        Duration::from_secs(30),
        async || {
            status_json(ports[0].admin)
                .await
                .is_some_and(|s| s["is_master"] == true)
        },
    )
    .await;
    exec_within(
        m1,
        "INSERT INTO test.t VALUES (400, 'after the restart', 4)",
        commit,
    )
    .await;
    let (_, metrics) = http_get(ports[0].admin, "/metrics").await.unwrap();
    let known = metrics
        .lines()
        .find(|l| l.starts_with("phxbinlogsvr_semisync_transactions_acked_known_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("acked_known counter in /metrics");
    assert_eq!(
        known, 1,
        "the last chosen transaction re-read and acknowledged"
    );
    let target = m1.gtid_binlog_pos().await.unwrap();
    for db in &dbs[1..] {
        db.wait_for_gtid(&target, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let sum = checksum(&dbs[0]).await;
    assert_eq!(sum, checksum(&dbs[1]).await);
    assert_eq!(sum, checksum(&dbs[2]).await);
    eprintln!("total {:?}", t_start.elapsed());
}

/// One transaction of `mib` MiB (one row event) on node 1, through binlog
/// servers started with `svr_args`: the commit returns (the write path
/// split it into parts of at most `max_value` bytes, the ACK came after the
/// last one), both replicas get it, `CHECKSUM TABLE` agrees, and each store
/// applied at least the parts it takes.
async fn a_large_transaction_replicates(
    name: &str,
    svr_args: &[&str],
    mib: usize,
    max_value: usize,
) -> TestCluster {
    let t_start = Instant::now();
    let c = TestCluster::start(name, svr_args).await;
    let m1 = &c.dbs[0];
    let commit = Duration::from_secs(20);
    exec_within(
        m1,
        "CREATE TABLE test.t (id INT PRIMARY KEY, v VARCHAR(64), b LONGBLOB)",
        commit,
    )
    .await;
    exec_within(
        m1,
        "INSERT INTO test.t VALUES (1, 'before', 'small')",
        commit,
    )
    .await;
    // 64 distinct bytes repeated: one row event of `mib` MiB.
    let big = format!(
        "INSERT INTO test.t VALUES (2, 'large', REPEAT(CONCAT(MD5('a'), MD5('b')), {mib} * 1024 * 1024 / 64))"
    );
    let t_big = Instant::now();
    exec_within(m1, &big, Duration::from_secs(60 + 4 * mib as u64)).await;
    let big_ms = t_big.elapsed().as_millis();
    exec_within(
        m1,
        "INSERT INTO test.t VALUES (3, 'after', 'small')",
        commit,
    )
    .await;

    let t_repl = Instant::now();
    let target = c
        .wait_replicas(Duration::from_secs(60 + 2 * mib as u64))
        .await;
    let repl_ms = t_repl.elapsed().as_millis();
    let sums = [
        checksum(&c.dbs[0]).await,
        checksum(&c.dbs[1]).await,
        checksum(&c.dbs[2]).await,
    ];
    assert_eq!(sums[0], sums[1], "CHECKSUM TABLE node1 vs node2");
    assert_eq!(sums[0], sums[2], "CHECKSUM TABLE node1 vs node3");
    let q =
        "SELECT CONCAT(COUNT(*), ':', SUM(LENGTH(b)), ':', MD5(GROUP_CONCAT(MD5(b)))) FROM test.t";
    let want: String = c.dbs[0].query_one(q).await.unwrap();
    assert!(
        want.starts_with(&format!("3:{}:", mib * 1024 * 1024 + 10)),
        "{want}"
    );
    for db in &c.dbs[1..] {
        assert_eq!(
            db.query_one::<String>(q).await.unwrap(),
            want,
            "{}",
            db.name()
        );
    }

    // Split, not proposed whole: at least this many parts on every store.
    let min_parts = (mib << 20).div_ceil(max_value) as u64;
    assert!(
        metric(
            c.ports[0].admin,
            "phxbinlogsvr_semisync_transactions_split_total"
        )
        .await
            >= 1
    );
    for p in &c.ports {
        wait_until(
            "every store at node1's position",
            Duration::from_secs(30),
            async || {
                status_json(p.admin)
                    .await
                    .is_some_and(|s| s["store"]["last_gtid_pos"] == target.as_str())
            },
        )
        .await;
        let parts = metric(p.admin, "phxbinlogsvr_store_parts_applied_total").await;
        assert!(
            parts >= min_parts,
            "{parts} parts stored, {min_parts} expected"
        );
    }
    assert_eq!(
        m1.status_u64("Rpl_semi_sync_master_no_tx").await.unwrap(),
        0,
        "every commit was acknowledged (none fell back to async)"
    );
    eprintln!(
        "{mib} MiB transaction: commit {big_ms} ms, replicas caught up {repl_ms} ms later; total {:?}",
        t_start.elapsed()
    );
    c
}

/// A transaction well over the per-value limit (lowered to 4 MiB for the
/// test: 40 MiB in 10 parts) replicates as one unit. Then one whose
/// master's binlog server is killed midway (some parts chosen): no commit
/// until the restarted server, its new dump sending the whole transaction
/// again, proposes it afresh from part 0; it is then applied once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_over_the_value_limit_is_split_and_replicates() {
    let max_value = 4 << 20;
    let mut c =
        a_large_transaction_replicates("split", &["--max-value-bytes", "4194304"], 40, max_value)
            .await;

    // Midway: kill node 1's binlog server once node 2 stored 2 parts.
    let parts_before = metric(c.ports[1].admin, "phxbinlogsvr_store_parts_applied_total").await;
    let mib = 40;
    let db = Arc::clone(&c.dbs[0]);
    let t_wait = Instant::now();
    let pending = tokio::spawn(async move {
        db.exec("INSERT INTO test.t VALUES (4, 'again', REPEAT(CONCAT(MD5('c'), MD5('d')), 40 * 1024 * 1024 / 64))")
            .await
    });
    let n2 = c.ports[1].admin;
    wait_until(
        "node2 to store 2 parts",
        Duration::from_secs(60),
        async || metric(n2, "phxbinlogsvr_store_parts_applied_total").await >= parts_before + 2,
    )
    .await;
    c.svrs[0].kill();
    let killed_after = metric(n2, "phxbinlogsvr_store_parts_applied_total").await - parts_before;
    eprintln!(
        "killed node1's binlog server after {killed_after} parts ({:?})",
        t_wait.elapsed()
    );
    assert!(
        !pending.is_finished(),
        "the commit returned before its last part"
    );
    let pos = status_json(n2).await.expect("node2 status")["store"]["last_gtid_pos"].clone();
    let before = c.dbs[0].gtid_binlog_pos().await.unwrap();
    assert_ne!(
        pos,
        before.as_str(),
        "the split transaction is not visible in the store yet"
    );
    c.svrs[0].start();
    tokio::time::timeout(Duration::from_secs(120), pending)
        .await
        .expect("the interrupted commit returned after the restart")
        .unwrap()
        .unwrap();
    eprintln!(
        "the interrupted commit returned after {:?}",
        t_wait.elapsed()
    );
    let target = c.wait_replicas(Duration::from_secs(120)).await;
    let sum = checksum(&c.dbs[0]).await;
    assert_eq!(
        sum,
        checksum(&c.dbs[1]).await,
        "CHECKSUM TABLE node1 vs node2"
    );
    assert_eq!(
        sum,
        checksum(&c.dbs[2]).await,
        "CHECKSUM TABLE node1 vs node3"
    );
    let q = "SELECT CONCAT(LENGTH(b), ':', MD5(b)) FROM test.t WHERE id = 4";
    let want: String = c.dbs[0].query_one(q).await.unwrap();
    assert!(want.starts_with(&format!("{}:", mib << 20)), "{want}");
    for db in &c.dbs[1..] {
        assert_eq!(db.query_one::<String>(q).await.unwrap(), want);
    }
    // The restarted server continued with the remaining parts (resumed),
    // or, if its store had not caught up, proposed it again from part 0
    // (the first attempt's parts abandoned): either way every part stored.
    let n_parts = ((mib << 20) as u64).div_ceil(max_value as u64);
    let stored = metric(n2, "phxbinlogsvr_store_parts_applied_total").await - parts_before;
    let resumed = metric(
        c.ports[0].admin,
        "phxbinlogsvr_semisync_transactions_resumed_total",
    )
    .await;
    eprintln!("{stored} parts stored on node2 for {n_parts}; resumed {resumed}");
    assert!(stored >= n_parts, "{stored} parts stored");
    if resumed == 0 {
        assert!(stored >= killed_after + n_parts, "{stored} parts stored");
    }
    wait_until(
        "node2's store at node1's position",
        Duration::from_secs(30),
        async || {
            status_json(n2)
                .await
                .is_some_and(|s| s["store"]["last_gtid_pos"] == target.as_str())
        },
    )
    .await;
}

/// The case: 256 MiB with the default per-value limit (4 MiB: 64
/// parts). About 40 s in a debug build (commit 16.5 s, replicas 8.3 s
/// later) and a few GiB of disk across the nodes, freed at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_256_mib_transaction_replicates() {
    a_large_transaction_replicates("huge", &[], 256, 4 << 20).await;
}

/// A cluster file that cannot be used stops the binary at once with the
/// config crate's `FILE:LINE:COL: KEY: PROBLEM` message, and an unknown
/// node name lists the known ones.
#[test]
fn a_bad_cluster_file_is_reported_with_file_key_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.yaml");
    fs::write(
        &path,
        "version: 1\ncluster_id: 7\ncredentials:\n  replication: {password: r}\n  \
         mariadb_admin: {password: a}\n  admin_api: {token: t}\nnodes:\n  \
         - {name: n1, id: 1, host: 127.0.0.1, paxos_prot: 1}\n",
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let run = |node: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_phxbinlogsvr"))
            .args(["--config", path.to_str().unwrap(), "--node", node])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("n1");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad.yaml:8:"), "{err}");
    assert!(err.contains("nodes[0].paxos_prot: unknown field"), "{err}");

    fs::write(
        &path,
        "version: 1\ncluster_id: 7\ncredentials:\n  replication: {password: r}\n  \
         mariadb_admin: {password: a}\n  admin_api: {token: t}\nnodes:\n  \
         - {name: n1, id: 1, host: 127.0.0.1}\n",
    )
    .unwrap();
    let (code, err) = run("n9");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no node named `n9` (the file has: n1)"),
        "{err}"
    );
}
