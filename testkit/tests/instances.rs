//! The kit against a real mariadbd (install it with
//! `apt-get install -y mariadb-server mariadb-client`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use testkit::mysql_async::prelude::Queryable;
use testkit::{APP_PASSWORD, APP_USER, Cluster, MariaDb, REPL_PASSWORD, REPL_USER, TestkitError};

fn process_exists(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn two_instances_side_by_side_with_the_design_settings() {
    let started = Instant::now();
    let cluster = Cluster::start(2).await.unwrap();
    eprintln!("two instances started in {:?}", started.elapsed());
    let (a, b) = (&cluster[0], &cluster[1]);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.server_id(), b.server_id());
    assert_ne!(a.datadir(), b.datadir());

    for (i, db) in cluster.iter().enumerate() {
        db.exec("CREATE TABLE test.t (id INT PRIMARY KEY, v VARCHAR(20))")
            .await
            .unwrap();
        db.exec(&format!("INSERT INTO test.t VALUES (1, 'node{i}')"))
            .await
            .unwrap();
    }
    for (i, db) in cluster.iter().enumerate() {
        let v: String = db
            .query_one("SELECT v FROM test.t WHERE id = 1")
            .await
            .unwrap();
        assert_eq!(v, format!("node{i}"));
        // CREATE TABLE and INSERT: two GTIDs of this server in domain 0.
        assert_eq!(
            db.gtid_binlog_pos().await.unwrap(),
            format!("0-{}-2", db.server_id())
        );
        let id: u32 = db.query_one("SELECT @@server_id").await.unwrap();
        assert_eq!(id, db.server_id());

        for (name, want) in [
            ("log_bin", "ON"),
            ("binlog_format", "ROW"),
            ("sync_binlog", "1"),
            ("innodb_flush_log_at_trx_commit", "1"),
            ("gtid_strict_mode", "ON"),
            ("gtid_domain_id", "0"),
            ("log_slave_updates", "ON"),
            ("max_allowed_packet", "1073741824"),
            ("bind_address", "127.0.0.1"),
            ("skip_name_resolve", "ON"),
            ("performance_schema", "OFF"),
            ("binlog_checksum", "CRC32"),
            ("rpl_semi_sync_master_enabled", "OFF"),
            ("rpl_semi_sync_slave_enabled", "OFF"),
        ] {
            assert_eq!(
                db.variable(name).await.unwrap(),
                want,
                "{name} on {}",
                db.name()
            );
        }
        assert_eq!(
            db.status_var("Rpl_semi_sync_master_clients").await.unwrap(),
            "0"
        );
    }
}

#[tokio::test]
async fn a_fresh_instance_has_its_accounts_files_and_an_empty_binlog_position() {
    let db = MariaDb::builder()
        .name("fresh")
        .gtid_domain_id(7)
        .start()
        .await
        .unwrap();
    assert_eq!(db.name(), "fresh");
    assert_eq!(db.gtid_binlog_pos().await.unwrap(), "");
    assert_eq!(db.gtid_current_pos().await.unwrap(), "");
    assert_eq!(db.variable("gtid_domain_id").await.unwrap(), "7");
    assert_eq!(db.url(), format!("mysql://root@127.0.0.1:{}", db.port()));
    assert!(db.socket().exists());
    assert!(db.datadir().join("mysql").is_dir());
    assert!(
        db.cnf_text()
            .unwrap()
            .contains(&format!("port={}", db.port()))
    );
    assert!(db.pid().is_some());
    assert!(matches!(
        db.variable("no_such_variable").await,
        Err(TestkitError::UnknownVariable { .. })
    ));

    // root over the URL (mysql_async then switches to the socket: root@localhost).
    let mut conn = testkit::mysql_async::Conn::from_url(db.url())
        .await
        .unwrap();
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    conn.disconnect().await.unwrap();

    // repl: may read binlog positions, not data.
    let mut repl = db.conn_as(REPL_USER, REPL_PASSWORD).await.unwrap();
    let logs: Vec<(String, u64)> = repl.query("SHOW BINARY LOGS").await.unwrap();
    assert!(!logs.is_empty());
    assert!(repl.query_drop("SELECT * FROM mysql.user").await.is_err());
    repl.disconnect().await.unwrap();

    // app: ordinary data access, no privileges over the server.
    let mut app = db.conn_as(APP_USER, APP_PASSWORD).await.unwrap();
    app.query_drop("CREATE TABLE test.a (id INT PRIMARY KEY)")
        .await
        .unwrap();
    app.query_drop("INSERT INTO test.a VALUES (1)")
        .await
        .unwrap();
    assert!(app.query_drop("SET GLOBAL read_only = ON").await.is_err());
    app.disconnect().await.unwrap();
}

/// The READ ONLY ADMIN trap of the design brief: `read_only` stops the
/// application account, but root (ALL PRIVILEGES includes READ ONLY ADMIN in
/// MariaDB 10.11) writes on.
#[tokio::test]
async fn read_only_stops_app_but_not_root() {
    let db = MariaDb::start().await.unwrap();
    db.exec("CREATE TABLE test.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    db.exec("SET GLOBAL read_only = ON").await.unwrap();

    let mut app = db.conn_as(APP_USER, APP_PASSWORD).await.unwrap();
    let err = app
        .query_drop("INSERT INTO test.t VALUES (1)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    app.disconnect().await.unwrap();

    db.exec("INSERT INTO test.t VALUES (2)").await.unwrap();
    let ids: Vec<i64> = db.query_rows("SELECT id FROM test.t").await.unwrap();
    assert_eq!(ids, vec![2]);
    let grants: Vec<String> = db
        .query_rows("SHOW GRANTS FOR 'root'@'127.0.0.1'")
        .await
        .unwrap();
    assert!(grants[0].contains("ALL PRIVILEGES"), "{grants:?}");
}

#[tokio::test]
async fn kill9_and_start_again_keep_committed_rows_and_the_binlog_position() {
    let db = MariaDb::start().await.unwrap();
    db.exec("CREATE TABLE test.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    for i in 0..10 {
        db.exec(&format!("INSERT INTO test.t VALUES ({i})"))
            .await
            .unwrap();
    }
    let pos = db.gtid_binlog_pos().await.unwrap();
    assert_eq!(pos, format!("0-{}-11", db.server_id()));
    let (port, old_pid) = (db.port(), db.pid().unwrap());

    db.kill9().await.unwrap();
    assert_eq!(db.pid(), None);
    assert!(!process_exists(old_pid));
    assert!(db.exec("SELECT 1").await.is_err());

    let started = Instant::now();
    db.start_again().await.unwrap();
    eprintln!(
        "restart after kill -9 (crash recovery) took {:?}",
        started.elapsed()
    );
    assert_eq!(db.port(), port);
    assert_ne!(db.pid(), Some(old_pid));
    let n: i64 = db.query_one("SELECT COUNT(*) FROM test.t").await.unwrap();
    assert_eq!(n, 10);
    assert_eq!(db.gtid_binlog_pos().await.unwrap(), pos);
    assert!(matches!(
        db.start_again().await,
        Err(TestkitError::AlreadyRunning { .. })
    ));
}

#[tokio::test]
async fn stop_and_restart_in_replica_mode_and_back() {
    let db = MariaDb::start().await.unwrap();
    db.exec("CREATE TABLE test.t (id INT PRIMARY KEY); INSERT INTO test.t VALUES (1)")
        .await
        .unwrap();
    let stopping = Instant::now();
    db.stop().await.unwrap();
    eprintln!("clean stop took {:?}", stopping.elapsed());
    assert!(!db.is_running());
    assert!(matches!(
        db.stop().await,
        Err(TestkitError::NotRunning { .. })
    ));

    db.start_again_with(&testkit::REPLICA_MODE_ARGS)
        .await
        .unwrap();
    assert_eq!(
        db.variable("rpl_semi_sync_slave_enabled").await.unwrap(),
        "ON"
    );
    assert_eq!(db.start_args(), testkit::REPLICA_MODE_ARGS.to_vec());
    let n: i64 = db.query_one("SELECT COUNT(*) FROM test.t").await.unwrap();
    assert_eq!(n, 1);

    db.stop().await.unwrap();
    db.start_again_with::<&str>(&[]).await.unwrap();
    assert_eq!(
        db.variable("rpl_semi_sync_slave_enabled").await.unwrap(),
        "OFF"
    );
}

#[tokio::test]
async fn sigstop_freezes_and_sigcont_resumes() {
    let db = MariaDb::start().await.unwrap();
    db.sigstop().unwrap();
    assert!(db.is_running());
    let frozen = tokio::time::timeout(Duration::from_millis(500), db.exec("SELECT 1")).await;
    assert!(frozen.is_err(), "a frozen server answered");
    db.sigcont().unwrap();
    let n: i64 = db.query_one("SELECT 1").await.unwrap();
    assert_eq!(n, 1);
    // Dropping a frozen instance works too (Drop sends SIGCONT first).
    db.sigstop().unwrap();
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_its_directory() {
    let db = MariaDb::start().await.unwrap();
    let (pid, dir) = (db.pid().unwrap(), db.dir().to_path_buf());
    assert!(process_exists(pid) && dir.exists());
    let dropping = Instant::now();
    drop(db);
    eprintln!("drop took {:?}", dropping.elapsed());
    assert!(!process_exists(pid), "mariadbd {pid} still runs");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn drop_cleans_up_after_a_panic_in_the_thread_holding_the_instance() {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let db = MariaDb::builder().name("doomed").start_blocking().unwrap();
        tx.send((db.pid().unwrap(), db.dir().to_path_buf()))
            .unwrap();
        panic!("test panic while holding an instance (expected)");
    });
    assert!(handle.join().is_err(), "the thread should have panicked");
    let (pid, dir) = rx.recv().unwrap();
    assert!(!process_exists(pid), "mariadbd {pid} still runs");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[tokio::test]
async fn start_many_gives_distinct_ready_instances() {
    let nodes = testkit::start_many(3).await.unwrap();
    let mut ids: Vec<u32> = nodes.iter().map(MariaDb::server_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for node in &nodes {
        let id: u32 = node.query_one("SELECT @@server_id").await.unwrap();
        assert_eq!(id, node.server_id());
    }
}

#[tokio::test]
async fn a_failed_start_reports_the_error_log() {
    let err = MariaDb::builder()
        .cnf("no_such_option=1")
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TestkitError::Exited { .. }), "{text}");
    assert!(text.contains("unknown variable"), "{text}");
}

#[tokio::test]
async fn a_taken_port_is_detected_from_the_error_log() {
    // Some program outside the kit holds the port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let err = MariaDb::builder().port(port).start().await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, TestkitError::PortInUse { attempts: 1, .. }),
        "{text}"
    );
    assert!(text.contains("Address already in use"), "{text}");
}

#[tokio::test]
async fn the_cnf_gives_a_root_shell_with_the_mariadb_client() {
    let db = MariaDb::start().await.unwrap();
    let client = ["/usr/bin/mariadb", "/usr/local/bin/mariadb"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(client) = client else {
        eprintln!("no mariadb client installed; skipped");
        return;
    };
    let out = std::process::Command::new(client)
        .arg(format!("--defaults-file={}", db.cnf_path().display()))
        .args(["-N", "-e", "SELECT CURRENT_USER()"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "root@localhost"
    );
}
