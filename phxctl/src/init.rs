//! `phxctl init`: bootstraps a cluster from its file, first node, then the
//! members.
//!
//! The file's voters (usually just the first node) form the cluster when
//! they start; every node listed as a `learner` is a member-to-be (it
//! follows the log from the start). `init` waits for the voters to elect a
//! master, then promotes each learner in file order once it has caught up
//! (`member add`). Run it again after a failure: it skips what is done.
//!
//! Everything a new node needs comes from the log, so a first node must
//! start with an empty MariaDB: data that existed before the cluster is not
//! in the log, and its GTIDs would mark the node diverged. Import such data
//! through the read-write port once the cluster runs.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use phxsql_config::ClusterConfig;

const MASTER_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn init(cfg: &ClusterConfig) -> Result<()> {
    let learners: Vec<_> = cfg.nodes.iter().filter(|n| !n.is_voter()).collect();
    let voters: Vec<&str> = cfg.voters().map(|n| n.name.as_str()).collect();
    println!(
        "voters {}; to add: {}",
        voters.join(", "),
        if learners.is_empty() {
            "none".to_string()
        } else {
            learners
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let master = crate::wait_for_master(
        cfg,
        MASTER_TIMEOUT,
        "waiting for the voters to elect a master",
        || Ok(()),
    )
    .await
    .with_context(|| {
        format!(
            "start the voters ({}) first: phxbinlogsvr and phxsqlproxy on each; on one machine, phxctl local up",
            voters.join(", ")
        )
    })?;
    println!("{master} is the master");
    for node in learners {
        let route = crate::admin(cfg, node).get_json("/route").await;
        if route.is_err() {
            bail!(
                "{} does not answer at {}: start its processes, then run init again",
                node.name,
                node.admin_addr()
            );
        }
        crate::member::add(cfg, &node.name, false).await?;
    }
    println!();
    crate::status::print(cfg, false).await
}
