//! Lossless semi-sync between two instances: checks the settings the binlog
//! server relies on, as MariaDB 10.11 really applies them.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use testkit::MariaDb;

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn semi_sync_master_waits_for_the_replica_ack() {
    let (master, replica) = tokio::join!(
        MariaDb::builder()
            .name("master")
            .semi_sync_master(true)
            .start(),
        MariaDb::builder()
            .name("replica")
            .replica_mode(true)
            .start(),
    );
    let (master, replica) = (master.unwrap(), replica.unwrap());

    for (name, want) in [
        ("rpl_semi_sync_master_enabled", "ON"),
        ("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
        ("rpl_semi_sync_master_wait_no_slave", "ON"),
        ("rpl_semi_sync_master_timeout", "4294967295"),
    ] {
        assert_eq!(master.variable(name).await.unwrap(), want, "{name}");
    }
    assert_eq!(
        replica
            .variable("rpl_semi_sync_slave_enabled")
            .await
            .unwrap(),
        "ON"
    );
    // As the design brief warns: ON although no replica is connected.
    assert_eq!(
        master
            .status_var("Rpl_semi_sync_master_status")
            .await
            .unwrap(),
        "ON"
    );

    replica.replicate_from(&master).await.unwrap();
    wait_for("a semi-sync client", async || {
        master
            .status_u64("Rpl_semi_sync_master_clients")
            .await
            .unwrap()
            == 1
    })
    .await;
    assert_eq!(
        replica
            .status_var("Rpl_semi_sync_slave_status")
            .await
            .unwrap(),
        "ON"
    );

    let yes_before = master
        .status_u64("Rpl_semi_sync_master_yes_tx")
        .await
        .unwrap();
    master
        .exec("CREATE TABLE test.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    master
        .exec("INSERT INTO test.t VALUES (1), (2)")
        .await
        .unwrap();
    assert_eq!(
        master
            .status_u64("Rpl_semi_sync_master_yes_tx")
            .await
            .unwrap(),
        yes_before + 2
    );
    assert_eq!(
        master
            .status_u64("Rpl_semi_sync_master_no_tx")
            .await
            .unwrap(),
        0
    );

    let pos = master.gtid_binlog_pos().await.unwrap();
    replica
        .wait_for_gtid(&pos, Duration::from_secs(30))
        .await
        .unwrap();
    let n: i64 = replica
        .query_one("SELECT COUNT(*) FROM test.t")
        .await
        .unwrap();
    assert_eq!(n, 2);
    // log_slave_updates: the replica's binlog holds the master's GTIDs.
    assert_eq!(replica.gtid_binlog_pos().await.unwrap(), pos);
}
