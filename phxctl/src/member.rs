//! `phxctl member add|remove`: membership changes through the master's
//! admin API (`POST /members`), one Paxos membership value each.
//!
//! Adding is two changes with a catch-up between them: the node joins as a
//! learner (it receives every value, votes on none), its binlog server and
//! MariaDB catch up, and only then is it promoted to voter, so that the
//! majority never waits on a node that is still far behind.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use phxsql_config::ClusterConfig;
use serde_json::json;

/// Longest wait for a new node to catch up before it is promoted.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

async fn master_node(cfg: &ClusterConfig) -> Result<&phxsql_config::NodeConfig> {
    let Some(name) = crate::current_master(cfg).await else {
        bail!("no node reports a master: membership changes need one (is an election under way?)");
    };
    Ok(cfg.node(&name)?)
}

/// The current membership, as the master sees it: (voters, learners) ids.
async fn members(cfg: &ClusterConfig) -> Result<(Vec<u64>, Vec<u64>)> {
    let master = master_node(cfg).await?;
    let m = crate::admin(cfg, master).get_json("/members").await?;
    let ids = |key: &str| -> Vec<u64> {
        m[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v["id"].as_u64()).collect())
            .unwrap_or_default()
    };
    Ok((ids("voters"), ids("learners")))
}

async fn change(cfg: &ClusterConfig, body: serde_json::Value) -> Result<()> {
    let master = master_node(cfg).await?;
    crate::admin(cfg, master)
        .post_json("/members", Some(&body))
        .await
        .with_context(|| format!("asking the master {} for {body}", master.name))?;
    Ok(())
}

/// Adds `name`: as a learner, caught up, then a voter (or, with
/// `learner_only`, stops once its binlog server has caught up).
pub async fn add(cfg: &ClusterConfig, name: &str, learner_only: bool) -> Result<()> {
    let node = cfg.node(name)?;
    let (voters, learners) = members(cfg).await?;
    if voters.contains(&node.id) {
        println!("{name} is a voter already");
        return Ok(());
    }
    if !learners.contains(&node.id) {
        change(
            cfg,
            json!({"op": "add_learner", "node": node.id, "paxos_addr": node.paxos_addr()}),
        )
        .await?;
        println!("{name} joined as a learner; catching up ...");
    }

    // Caught up: its store has what the master's has, and its MariaDB has
    // applied it (lag 0).
    let start = Instant::now();
    let mut last_note = Instant::now();
    let mut client = crate::admin(cfg, node);
    loop {
        let master = master_node(cfg).await?;
        let target = crate::admin(cfg, master)
            .get_json("/status")
            .await
            .ok()
            .and_then(|s| s["paxos"]["chosen_prefix"].as_u64())
            .unwrap_or(u64::MAX);
        let (have, lag, role) = match client.get_json("/status").await {
            Ok(s) => (
                s["paxos"]["chosen_prefix"].as_u64().unwrap_or(0),
                s["agent"]["lag_ms"].as_u64(),
                s["agent"]["role"].as_str().unwrap_or("-").to_string(),
            ),
            Err(_) => (0, None, "unreachable".to_string()),
        };
        if learner_only && have >= target {
            println!("{name} is a learner and its binlog server has caught up");
            return Ok(());
        }
        if have >= target && lag == Some(0) && role == "replica" {
            break;
        }
        if start.elapsed() > CATCH_UP_TIMEOUT {
            bail!(
                "{name} did not catch up within {CATCH_UP_TIMEOUT:?} (at instance {have} of {target}, role {role}); it stays a learner"
            );
        }
        if last_note.elapsed() > Duration::from_secs(2) {
            last_note = Instant::now();
            let pct = if target == u64::MAX || target == 0 {
                0.0
            } else {
                100.0 * have.min(target) as f64 / target as f64
            };
            println!("  {name}: instance {have} of {target} ({pct:.0}%), role {role}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    change(cfg, json!({"op": "promote", "node": node.id})).await?;
    println!(
        "{name} is a voter (took {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn remove(cfg: &ClusterConfig, name: &str) -> Result<()> {
    let node = cfg.node(name)?;
    let (voters, learners) = members(cfg).await?;
    if !voters.contains(&node.id) && !learners.contains(&node.id) {
        println!("{name} is not a member");
        return Ok(());
    }
    change(cfg, json!({"op": "remove", "node": node.id})).await?;
    println!("{name} removed; stop its processes now (it no longer counts for majorities)");
    Ok(())
}
