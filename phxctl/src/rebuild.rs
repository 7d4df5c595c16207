//! `phxctl node rebuild NODE --from PEER`: re-seed NODE's MariaDB from a
//! healthy peer, for a node reported `diverged` or a new node whose log
//! the cluster no longer holds from the start.
//!
//! 1. NODE's processes stop (they run on this machine, started by `phxctl
//!    local`).
//! 2. PEER's binlog server makes a physical backup of its MariaDB
//!    (`GET /backup`: `mariadb-backup --backup --stream=xbstream`), which is
//!    downloaded with a progress line and checked against its length.
//! 3. It is extracted (`mbstream -x`) and prepared (`mariadb-backup
//!    --prepare`) beside NODE's data directory; the backup's GTID position
//!    (`mariadb_backup_binlog_info`) is left for the agent to adopt.
//! 4. The old data directory is kept as `<datadir>.before-rebuild` (nothing
//!    is deleted), the new one takes its place, and NODE starts: its agent
//!    adopts the position and replicates what was chosen since.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use phxsql_adminapi::AdminClient;
use phxsql_config::ClusterConfig;

/// The backup's GTID position, from `xtrabackup_binlog_info` (MariaDB
/// 10.x; `mariadb_backup_binlog_info` from 11.x): `<binlog file>
/// <position> <gtid position>`.
pub fn backup_gtid(datadir: &Path) -> Result<String> {
    for name in ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"] {
        let path = datadir.join(name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        return parse_binlog_info(&text)
            .with_context(|| format!("{}: no GTID position in {text:?}", path.display()));
    }
    bail!(
        "{}: the backup has no binary log position (is log_bin on at the peer?)",
        datadir.display()
    )
}

fn parse_binlog_info(text: &str) -> Option<String> {
    let gtid = text.split_whitespace().nth(2)?;
    Some(gtid.to_string())
}

fn run(cmd: &mut Command, what: &str, log: &Path) -> Result<()> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = cmd
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("running {what} (Debian package mariadb-backup)"))?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({status}): {}", tail.join(" | "));
    }
    Ok(())
}

pub async fn rebuild(cfg: &ClusterConfig, name: &str, from: &str) -> Result<()> {
    let node = cfg.node(name)?;
    let peer = cfg.node(from)?;
    if node.id == peer.id {
        bail!("a node cannot be rebuilt from itself");
    }
    let route = crate::admin(cfg, peer)
        .get_json("/route")
        .await
        .with_context(|| format!("asking {from} whether it is healthy"))?;
    let role = route["agent"]["role"].as_str().unwrap_or("unknown");
    if !matches!(role, "replica" | "master") || route["agent"]["mariadb_up"] != true {
        bail!("{from} is not a healthy source (role {role}); pick a replica that is caught up");
    }

    println!("stopping {name} ...");
    crate::local::down(cfg, Some(name)).await?;

    let work = node.data_dir.join("rebuild");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let file = work.join("backup.xbs");
    println!("{from} is making a backup of its MariaDB (it is sent once complete) ...");
    let mut client = AdminClient::new(
        peer.admin_addr(),
        Some(cfg.credentials.admin_token.expose().to_string()),
        Duration::from_secs(10),
    );
    let start = Instant::now();
    let mut first_byte: Option<Instant> = None;
    let mut last_print = Instant::now();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let got = client
        .download("/backup", &file, Duration::from_secs(600), |done, total| {
            let t0 = *first_byte.get_or_insert_with(Instant::now);
            if last_print.elapsed() >= Duration::from_millis(500) || Some(done) == total {
                last_print = Instant::now();
                let rate = mib(done) / t0.elapsed().as_secs_f64().max(0.001);
                match total {
                    Some(t) => print!(
                        "\r  received {:.1} of {:.1} MiB ({:.0}%), {rate:.1} MiB/s   ",
                        mib(done),
                        mib(t),
                        100.0 * done as f64 / t.max(1) as f64
                    ),
                    None => print!("\r  received {:.1} MiB, {rate:.1} MiB/s   ", mib(done)),
                }
                let _ = std::io::stdout().flush();
            }
        })
        .await
        .with_context(|| format!("downloading the backup of {from}"))?;
    println!(
        "\n  {:.1} MiB in {:.1} s",
        mib(got),
        start.elapsed().as_secs_f64()
    );

    println!("extracting and preparing it ...");
    let staged = work.join("datadir");
    fs::create_dir_all(&staged)?;
    let input = fs::File::open(&file)?;
    run(
        Command::new("mbstream")
            .args(["-x", "-C"])
            .arg(&staged)
            .stdin(Stdio::from(input)),
        "mbstream -x",
        &work.join("mbstream.log"),
    )?;
    let _ = fs::remove_file(&file);
    run(
        Command::new("mariadb-backup")
            .arg("--prepare")
            .arg(format!("--target-dir={}", staged.display()))
            .stdin(Stdio::null()),
        "mariadb-backup --prepare",
        &work.join("prepare.log"),
    )?;
    let gtid = backup_gtid(&staged)?;
    fs::write(staged.join(agent::RESTORED_GTID_FILE), format!("{gtid}\n"))?;

    let datadir = &node.mariadb_datadir;
    let old = datadir.with_extension("before-rebuild");
    if datadir.exists() {
        let _ = fs::remove_dir_all(&old);
        fs::rename(datadir, &old)
            .with_context(|| format!("moving {} to {}", datadir.display(), old.display()))?;
    }
    fs::rename(&staged, datadir)
        .with_context(|| format!("moving the rebuilt data to {}", datadir.display()))?;
    let _ = fs::remove_dir_all(&work);
    println!(
        "restored at GTID {gtid}; the old data directory is kept as {} (remove it when satisfied)",
        old.display()
    );

    println!("starting {name} ...");
    crate::local::up(cfg, Some(name)).await?;
    println!(
        "{name} rebuilt from {from} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_from_binlog_info() {
        assert_eq!(
            parse_binlog_info("mysql-bin.000003\t385\t0-1001001-42\n").as_deref(),
            Some("0-1001001-42")
        );
        assert_eq!(
            parse_binlog_info("b.000001 10 0-1-5,1-2-7").as_deref(),
            Some("0-1-5,1-2-7")
        );
        assert_eq!(parse_binlog_info("b.000001 10"), None);
    }
}
