//! phxsqlproxy end to end: real MariaDB servers, real binlog servers with
//! their agents, the proxy binary, and real clients (the `mariadb` CLI,
//! PyMySQL, sysbench, mysql_async).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::common::{http_get, wait_until};
use support::{ProxyCluster, Setup, TOKEN, mariadb_cli, mariadb_ok, python};
use testkit::mysql_async::prelude::Queryable;
use testkit::{APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const START: Duration = Duration::from_secs(60);

/// Every kind of client through both ports: the CLI (TLS, compression,
/// LOAD DATA LOCAL, the client's own address), mysql_async (prepared
/// statements, multi-statements, a 64 MiB row), PyMySQL (TLS) and sysbench.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_both_ports() {
    let c = ProxyCluster::start("pxclients", Setup::default()).await;
    let m = c.wait_master(START).await;
    let r = (m + 1) % 3; // a replica
    let master_id: u32 = c.dbs[m].query_one("SELECT @@server_id").await.unwrap();
    let (rw, ro) = (c.ports[r].rw, c.ports[r].ro);

    // The replica's RW port reaches the master, writable.
    let got = mariadb_ok(rw, &[], "SELECT @@server_id, @@read_only");
    assert_eq!(
        got,
        format!("{master_id}\t0"),
        "RW of node{} reaches the master",
        r + 1
    );
    let replica_id: u32 = c.dbs[r].query_one("SELECT @@server_id").await.unwrap();
    let got = mariadb_ok(ro, &[], "SELECT @@server_id, @@read_only");
    assert_eq!(
        got,
        format!("{replica_id}\t1"),
        "RO serves the local replica"
    );

    mariadb_ok(
        rw,
        &[],
        "CREATE DATABASE app; CREATE TABLE app.kv (k INT PRIMARY KEY, v VARCHAR(64)); \
         CREATE TABLE app.big (id INT PRIMARY KEY, b LONGBLOB)",
    );

    // TLS end to end, verified against the server's certificate.
    let ca = format!("--ssl-ca={}", c.ca.display());
    for port in [rw, ro] {
        let cipher = mariadb_ok(
            port,
            &[&ca, "--ssl-verify-server-cert"],
            "SHOW SESSION STATUS LIKE 'Ssl_cipher'",
        );
        let cipher = cipher.split('\t').nth(1).unwrap_or("");
        assert!(!cipher.is_empty(), "TLS through port {port}");
    }

    // Compression.
    let comp = mariadb_ok(
        ro,
        &["--compress"],
        "SHOW SESSION STATUS LIKE 'Compression'",
    );
    assert_eq!(comp, "Compression\tON");

    // LOAD DATA LOCAL INFILE through the RW port.
    let csv = c.tmp.path().join("kv.csv");
    let rows: String = (1..=500).map(|k| format!("{k},value-{k}\n")).collect();
    std::fs::write(&csv, rows).unwrap();
    mariadb_ok(
        rw,
        &["--local-infile=1"],
        &format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE app.kv FIELDS TERMINATED BY ','",
            csv.display()
        ),
    );
    assert_eq!(mariadb_ok(rw, &[], "SELECT COUNT(*) FROM app.kv"), "500");

    // mysql_async: prepared statements, a multi-statement query, 64 MiB.
    let mut conn = c.app_conn(rw).await;
    conn.exec_drop("INSERT INTO app.kv VALUES (?, ?)", (1000, "prepared"))
        .await
        .unwrap();
    let v: Option<String> = conn
        .exec_first("SELECT v FROM app.kv WHERE k = ?", (1000,))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("prepared"));
    conn.query_drop("INSERT INTO app.kv VALUES (1001, 'a'); INSERT INTO app.kv VALUES (1002, 'b')")
        .await
        .unwrap();
    drop(conn);

    // A 64 MiB row both ways through both ports: a prepared statement's
    // parameter goes up as packets over 16 MiB, and comes back as a row.
    // (Not written to a table: that would test the binlog server's handling
    // of large transactions, not the proxy.)
    let big: Vec<u8> = (0..64 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for port in [rw, ro] {
        let mut conn = c.app_conn(port).await;
        let back: Option<Vec<u8>> = conn.exec_first("SELECT ?", (big.clone(),)).await.unwrap();
        assert!(
            back.as_ref() == Some(&big),
            "64 MiB row through port {port}"
        );
    }

    // PyMySQL, over TLS, both ports; from 127.0.0.2, which MariaDB must
    // see as the client's address (the PROXY header).
    let script = format!(
        r#"
import pymysql, sys
rw, ro, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def conn(port):
    return pymysql.connect(host="127.0.0.1", port=port, user="{APP_USER}", password="{APP_PASSWORD}",
                           ssl={{"ca": ca}}, autocommit=True, bind_address="127.0.0.2")
for port in (rw, ro):
    with conn(port).cursor() as cur:
        cur.execute("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        host = cur.fetchone()[0]
        assert host.startswith("127.0.0.2:"), "MariaDB saw " + host
w = conn(rw)
with w.cursor() as cur:
    cur.execute("INSERT INTO app.kv VALUES (%s, %s)", (2000, "pymysql"))
    cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert cur.fetchone()[1], "no TLS"
r = conn(ro)
with r.cursor() as cur:
    cur.execute("SELECT @@read_only")
    print(cur.fetchone()[0])
"#
    );
    let out = Command::new(python())
        .args(["-c", &script, &rw.to_string(), &ro.to_string()])
        .arg(&c.ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyMySQL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // sysbench: read-write through RW, read-only through RO.
    mariadb_ok(rw, &[], "CREATE DATABASE sbtest");
    let sysbench = |port: u16, test: &str, cmd: &str| {
        let out = Command::new("sysbench")
            .arg(test)
            .args(["--db-driver=mysql", "--mysql-host=127.0.0.1"])
            .arg(format!("--mysql-port={port}"))
            .arg(format!("--mysql-user={APP_USER}"))
            .arg(format!("--mysql-password={APP_PASSWORD}"))
            .args(["--tables=1", "--table-size=1000", "--threads=4", "--time=3"])
            .arg(cmd)
            .output()
            .expect("sysbench (Debian package sysbench)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "sysbench {test} {cmd} on {port}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // sysbench retries deadlocks ("ignored errors"), which concurrent
        // read-write transactions may meet; what counts is work done.
        let done: u64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("transactions:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(cmd != "run" || done > 0, "{text}");
        text
    };
    sysbench(rw, "oltp_read_write", "prepare");
    sysbench(rw, "oltp_read_write", "run");
    let mut ro_conn = c.app_conn(ro).await;
    wait_until(
        "sbtest on the replica",
        Duration::from_secs(60),
        async || {
            ro_conn
                .query_first::<u64, _>("SELECT COUNT(*) FROM sbtest.sbtest1")
                .await
                .ok()
                .flatten()
                == Some(1000)
        },
    )
    .await;
    let text = sysbench(ro, "oltp_read_only", "run");
    assert!(
        text.contains("ignored errors:                      0"),
        "read-only: {text}"
    );
}

/// The RW port of any node follows the master: a switchover closes the
/// connections to the old master, new ones reach the new master; with no
/// master at all, a client gets a MySQL error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_port_follows_the_master() {
    let mut c = ProxyCluster::start("pxswitch", Setup::default()).await;
    let m = c.wait_master(START).await;
    let t = (m + 1) % 3;
    let x = (m + 2) % 3; // the node whose RW port the client uses
    let mut old = c.app_conn(c.ports[x].rw).await;
    let id: u32 = old
        .query_first("SELECT @@server_id")
        .await
        .unwrap()
        .unwrap();
    let master_id: u32 = c.dbs[m].query_one("SELECT @@server_id").await.unwrap();
    assert_eq!(id, master_id);

    // Switchover to t.
    let body = format!("{{\"to\": \"node{}\"}}", t + 1);
    let mut s = TcpStream::connect(("127.0.0.1", c.ports[m].admin))
        .await
        .unwrap();
    let req = format!(
        "POST /switchover HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "switchover: {resp}");
    let m2 = c.wait_master(START).await;
    assert_eq!(m2, t);

    // The old connection was closed by the proxy.
    let mut closed = false;
    wait_until(
        "the old master's connection closed",
        Duration::from_secs(10),
        async || {
            closed = old.query_drop("SELECT 1").await.is_err();
            closed
        },
    )
    .await;
    drop(old);
    let (_, metrics) = http_get(c.ports[x].proxy_admin, "/metrics").await.unwrap();
    let closed_by_proxy: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("phxsqlproxy_closed_master_changed_total{") && l.contains("port=\"rw\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(closed_by_proxy >= 1, "{metrics}");

    // New connections reach the new master, writable.
    let new_id: u32 = c.dbs[t].query_one("SELECT @@server_id").await.unwrap();
    for i in 0..3 {
        let got = mariadb_ok(c.ports[i].rw, &[], "SELECT @@server_id, @@read_only");
        assert_eq!(got, format!("{new_id}\t0"), "RW of node{}", i + 1);
    }

    // No quorum, no master: the RW port answers with an error packet.
    let others: Vec<usize> = (0..3).filter(|&i| i != x).collect();
    for &i in &others {
        c.svrs[i].kill();
    }
    wait_until(
        "no master known by node x's proxy",
        Duration::from_secs(15),
        async || {
            c.proxy_status(x)
                .await
                .is_some_and(|s| s["rw_target"].is_null())
        },
    )
    .await;
    let out = mariadb_cli(c.ports[x].rw, &[], "SELECT 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("1053") && err.contains("no master"), "{err}");
    // The RO port still serves the local replica.
    assert_eq!(mariadb_ok(c.ports[x].ro, &[], "SELECT 1"), "1");
    // A quorum again: writes come back.
    c.svrs[others[0]].start();
    wait_until("node x's proxy routes writes again", START, async || {
        c.proxy_status(x)
            .await
            .is_some_and(|s| !s["rw_target"].is_null())
    })
    .await;
    assert_eq!(mariadb_ok(c.ports[x].rw, &[], "SELECT @@read_only"), "0");
}

/// A node without a live proxy does not campaign; once its proxy runs, it
/// may again.
/// Writes `text` to `path` the way an operator's tooling should: a
/// temporary file renamed into place (the proxy never reads half a file).
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The proxy takes the cluster file's node list while it runs (a node added
/// with `phxctl member add` is routed to without a restart); a file that
/// does not load is reported and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_list_follows_the_cluster_file() {
    let mut c = ProxyCluster::start("pxreload", Setup::default()).await;
    let m = c.wait_master(START).await;
    let x = (m + 1) % 3;
    // Node x's proxy, restarted on a copy of the file without the master.
    let full = std::fs::read_to_string(&c.cfg).unwrap();
    let master_line = format!("name: node{},", m + 1);
    let partial: String = full
        .lines()
        .filter(|l| !l.contains(&master_line))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(partial.len(), full.len());
    let own = c.tmp.path().join("proxy-own.yaml");
    replace_file(&own, &partial);
    drop(c.proxies[x].take());
    c.start_proxy_with_config(x, &own);
    wait_until("the proxy answers", Duration::from_secs(30), async || {
        c.proxy_status(x).await.is_some()
    })
    .await;
    // It cannot route writes to a node it does not know.
    let out = mariadb_cli(c.ports[x].rw, &[], "SELECT 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("1053") && err.contains("no master"), "{err}");

    // The file gains the node: writes are routed to it, without a restart.
    replace_file(&own, &full);
    wait_until(
        "the proxy routes writes to the master",
        Duration::from_secs(30),
        async || {
            c.proxy_status(x)
                .await
                .is_some_and(|s| s["rw_target"] == format!("node{}", m + 1))
        },
    )
    .await;
    let master_id: u32 = c.dbs[m].query_one("SELECT @@server_id").await.unwrap();
    let mut conn = c.app_conn(c.ports[x].rw).await;
    let id: Option<u32> = conn.query_first("SELECT @@server_id").await.unwrap();
    assert_eq!(id, Some(master_id));
    drop(conn.disconnect().await);

    // A broken file: reported, the running node list kept.
    replace_file(&own, "version: [\n");
    let log = c.tmp.path().join(format!("proxy{}.log", x + 1));
    wait_until(
        "the bad file reported",
        Duration::from_secs(30),
        async || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("keeping the running node list")
        },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("proxy-own.yaml"), "the error names the file");
    let mut conn = c.app_conn(c.ports[x].rw).await;
    let id: Option<u32> = conn.query_first("SELECT @@server_id").await.unwrap();
    assert_eq!(id, Some(master_id));
    drop(conn.disconnect().await);
    assert!(c.proxies[x].as_mut().unwrap().is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_proxy_does_not_become_master() {
    let mut c = ProxyCluster::start(
        "pxheart",
        Setup {
            proxies: [false, true, true],
            ..Setup::default()
        },
    )
    .await;
    let m = c.wait_master(START).await;
    assert_ne!(m, 0, "node1 has no proxy");
    let r = c.route(0).await.unwrap();
    assert_eq!(r["agent"]["proxy_alive"], false, "{r}");
    assert_eq!(r["agent"]["may_campaign"], false, "{r}");
    c.start_proxy(0);
    wait_until(
        "node1's proxy heartbeats",
        Duration::from_secs(10),
        async || {
            c.route(0).await.is_some_and(|r| {
                r["agent"]["proxy_alive"] == true && r["agent"]["may_campaign"] == true
            })
        },
    )
    .await;
}

/// Garbage, silence and thousands of idle connections: the proxy stays up,
/// keeps serving others, and refuses connections past its limit with a
/// MySQL error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_idle_clients_do_not_disturb_others() {
    const IDLE: usize = 5000;
    const LIMIT: usize = IDLE + 10;
    let _ = rlimit::increase_nofile_limit(4 * IDLE as u64);
    let c = ProxyCluster::start(
        "pxbad",
        Setup {
            proxy_yaml: format!(
                "max_connections: {LIMIT}, connect_timeout: 2s, master_wait_timeout: 1s"
            ),
            mariadb_options: vec![
                ("max_connections".into(), (2 * IDLE).to_string()),
                ("connect_timeout".into(), "300".into()),
            ],
            ..Setup::default()
        },
    )
    .await;
    let m = c.wait_master(START).await;
    let n = (m + 1) % 3;
    let (rw, ro) = (c.ports[n].rw, c.ports[n].ro);

    // Garbage after the greeting: MariaDB refuses it, that connection ends.
    for port in [rw, ro] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut greeting = [0u8; 4];
        s.read_exact(&mut greeting).await.unwrap();
        s.write_all(&[0xde; 3000]).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("the garbage connection is closed")
            .ok();
    }
    // Garbage before the greeting is read, and a client that says nothing.
    let mut early = TcpStream::connect(("127.0.0.1", ro)).await.unwrap();
    early.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let _silent = TcpStream::connect(("127.0.0.1", ro)).await.unwrap();

    // Thousands of idle connections (each got its greeting through).
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let sock = TcpSocket::new_v4().unwrap();
        let mut s = sock.connect(([127, 0, 0, 1], ro).into()).await.unwrap();
        if i % 500 == 0 {
            let mut greeting = [0u8; 4];
            s.read_exact(&mut greeting).await.unwrap();
        }
        idle.push(s);
    }
    wait_until(
        "the proxy holds every idle connection",
        Duration::from_secs(60),
        async || {
            c.proxy_status(n)
                .await
                .is_some_and(|s| s["connections"]["ro"].as_u64().unwrap_or(0) >= IDLE as u64)
        },
    )
    .await;

    // Others are served meanwhile, on both ports.
    assert_eq!(mariadb_ok(ro, &[], "SELECT 1"), "1");
    assert_eq!(mariadb_ok(rw, &[], "SELECT @@read_only"), "0");

    // Past max_connections: a MySQL error, not a dropped socket.
    let mut extra = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", ro)).await.unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        if head[4] == 0xFF {
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            refused = Some(String::from_utf8_lossy(&rest[2..]).to_string());
            break;
        }
        extra.push(s);
    }
    let refused = refused.expect("a connection past the limit is refused");
    assert!(refused.contains("Too many connections"), "{refused}");

    // Let them go: service as before, and the proxy is still the same process.
    drop(idle);
    drop(extra);
    wait_until(
        "the idle connections are gone",
        Duration::from_secs(60),
        async || {
            c.proxy_status(n)
                .await
                .is_some_and(|s| s["connections"]["ro"].as_u64().unwrap_or(u64::MAX) < 10)
        },
    )
    .await;
    assert_eq!(mariadb_ok(ro, &[], "SELECT 1"), "1");
    let mut proxies = c.proxies;
    assert!(proxies[n].as_mut().unwrap().is_running());
}
