//! `phxctl node rebuild NODE --from PEER`: re-seed NODE's MariaDB from a
//! healthy peer, for a node reported `diverged` or a new node whose log
//! the cluster no longer holds from the start.
//!
//! NODE's own binlog server does the work (`POST /rebuild`, see
//! `phxbinlogsvr/src/server/rebuild.rs`): its agent lets go of MariaDB and
//! stops it, PEER makes a physical backup (`mariadb-backup`), NODE
//! downloads, extracts and prepares it, keeps the old data directory as
//! `<mariadb_datadir>.before-rebuild` (or `.before-rebuild.N`), and its agent starts MariaDB again at
//! the backup's GTID position. So it works wherever NODE runs (phxctl local,
//! Docker, systemd) as long as it runs with `--supervise-mariadb`; phxctl
//! only starts it and shows the progress (`GET /rebuild`).

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use phxsql_config::ClusterConfig;
use serde_json::json;

/// How long NODE's admin API may stay unreachable during a rebuild.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(30);

pub async fn rebuild(cfg: &ClusterConfig, name: &str, from: &str) -> Result<()> {
    let node = cfg.node(name)?;
    let peer = cfg.node(from)?;
    if node.id == peer.id {
        bail!("a node cannot be rebuilt from itself");
    }
    let mut client = crate::admin(cfg, node);
    client
        .post_json("/rebuild", Some(&json!({ "from": from })))
        .await
        .with_context(|| format!("asking {name} to rebuild from {from}"))?;
    println!("{name}: rebuilding from {from}");
    let start = Instant::now();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut last_phase = String::from("checking");
    let mut last_ok = Instant::now();
    println!("  checking {from} and {name}'s data directory ...");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p = match client.get_json("/rebuild").await {
            Ok(p) => {
                last_ok = Instant::now();
                p
            }
            Err(_) if last_ok.elapsed() < UNREACHABLE_LIMIT => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{name} did not answer for {UNREACHABLE_LIMIT:?} during the rebuild")
                });
            }
        };
        let phase = p["phase"].as_str().unwrap_or("unknown").to_string();
        if phase != last_phase {
            if last_phase == "downloading" {
                println!();
            }
            match phase.as_str() {
                "stopping" => println!("  stopping {name}'s MariaDB ..."),
                "downloading" => {
                    println!(
                        "  {from} is making a backup of its MariaDB (it is sent once complete) ..."
                    )
                }
                "preparing" => println!("  extracting and preparing it ..."),
                "starting" => println!("  starting {name}'s MariaDB ..."),
                _ => {}
            }
            last_phase = phase.clone();
        }
        match phase.as_str() {
            "downloading" => {
                let done = p["received_bytes"].as_u64().unwrap_or(0);
                match p["total_bytes"].as_u64() {
                    Some(t) if done > 0 => print!(
                        "\r  received {:.1} of {:.1} MiB ({:.0}%)   ",
                        mib(done),
                        mib(t),
                        100.0 * done as f64 / t.max(1) as f64
                    ),
                    _ => print!(
                        "\r  waiting for the backup ({:.0} s)   ",
                        start.elapsed().as_secs_f64()
                    ),
                }
                let _ = std::io::stdout().flush();
            }
            "done" => {
                let gtid = p["gtid"].as_str().unwrap_or("?");
                match p["kept"].as_str() {
                    Some(kept) => println!(
                        "  restored at GTID {gtid}; the old data directory is kept as {kept} (remove it when satisfied)"
                    ),
                    None => println!("  restored at GTID {gtid}"),
                }
                println!(
                    "{name} rebuilt from {from} in {:.1} s; its agent replicates what was chosen since",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            "failed" => bail!(
                "rebuilding {name} failed: {} (unless the message says otherwise, its data directory was not replaced and its MariaDB runs on it again)",
                p["error"].as_str().unwrap_or("unknown error")
            ),
            "idle" => bail!("{name} shows no rebuild (did its binlog server restart?)"),
            _ => {}
        }
    }
}
