//! The default settings take a 256 MiB transaction (later tests push one
//! through the binlog server). Slow-ish, so ignored by default:
//! `cargo test -p testkit --test big_transaction -- --ignored`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use testkit::MariaDb;
use testkit::mysql_async::prelude::Queryable;

#[tokio::test]
#[ignore = "pushes 256 MiB through a master and a replica (seconds)"]
async fn a_256_mib_transaction_commits_and_replicates() {
    let (master, replica) = tokio::join!(MariaDb::start(), MariaDb::start());
    let (master, replica) = (master.unwrap(), replica.unwrap());
    replica.replicate_from(&master).await.unwrap();
    master
        .exec("CREATE TABLE test.big (id INT PRIMARY KEY, b LONGBLOB)")
        .await
        .unwrap();

    let started = Instant::now();
    let mut conn = master.conn().await.unwrap();
    conn.query_drop("BEGIN").await.unwrap();
    let chunk = vec![b'x'; 16 << 20];
    for id in 0..16 {
        conn.exec_drop("INSERT INTO test.big VALUES (?, ?)", (id, &chunk))
            .await
            .unwrap();
    }
    conn.query_drop("COMMIT").await.unwrap();
    conn.disconnect().await.unwrap();
    eprintln!("256 MiB transaction committed in {:?}", started.elapsed());

    let pos = master.gtid_binlog_pos().await.unwrap();
    replica
        .wait_for_gtid(&pos, Duration::from_secs(120))
        .await
        .unwrap();
    eprintln!(
        "... and applied on the replica after {:?}",
        started.elapsed()
    );
    let total: i64 = replica
        .query_one("SELECT SUM(LENGTH(b)) FROM test.big")
        .await
        .unwrap();
    assert_eq!(total, 256 << 20);
}
