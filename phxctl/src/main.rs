//! `phxctl`: runs a phxsql cluster through the nodes' admin APIs.
//!
//! ```text
//! phxctl --config cluster.yaml init
//! phxctl --config cluster.yaml status [--json]
//! phxctl --config cluster.yaml switchover --to node2
//! phxctl --config cluster.yaml lease set 3s
//! phxctl --config cluster.yaml member add|remove node4
//! phxctl --config cluster.yaml node rebuild node2 --from node3
//! phxctl local up|down|status          # a cluster on this machine (configs/cluster-3.yaml)
//! ```

mod init;
mod local;
mod member;
mod rebuild;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use phxsql_adminapi::AdminClient;
use phxsql_config::ClusterConfig;

#[derive(Parser, Debug)]
#[command(name = "phxctl", about = "Runs a phxsql cluster")]
struct Args {
    /// The cluster file (YAML). Default: $PHXSQL_CONFIG, and for `local`,
    /// configs/cluster-3.yaml.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bootstrap the cluster from its file: once the voters have a master,
    /// make every node listed as a learner a voter, in file order, each
    /// once it has caught up.
    Init,
    /// One line per node: role, lease left, chosen and applied GTIDs, lag, health.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Move the master lease to NODE with minimal write downtime.
    Switchover {
        /// The node to become master.
        #[arg(long)]
        to: String,
    },
    /// The master lease.
    Lease {
        #[command(subcommand)]
        action: LeaseCmd,
    },
    /// Membership: grow or shrink the set of nodes.
    Member {
        #[command(subcommand)]
        action: MemberCmd,
    },
    /// One node: `node rebuild NODE --from PEER`.
    Node {
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// A cluster whose nodes all run on this machine.
    Local {
        #[command(subcommand)]
        action: LocalCmd,
    },
}

#[derive(Subcommand, Debug)]
enum LeaseCmd {
    /// Set the cluster's lease length (e.g. 3s): a dead master is replaced
    /// about this long after it died. Takes effect at once on every node and
    /// stays with later masters (the file's `lease.duration` only seeds a
    /// new cluster).
    Set { duration: String },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// Add NODE (in the cluster file, its processes running): it joins as a
    /// learner, catches up, then votes.
    Add {
        node: String,
        /// Stop once it is a learner whose binlog server has caught up (to
        /// seed its MariaDB with `node rebuild` before it votes).
        #[arg(long)]
        learner: bool,
    },
    /// Remove NODE from the membership (stop its processes afterwards).
    Remove { node: String },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Re-seed NODE's MariaDB from PEER (mariadb-backup), then let it catch
    /// up and rejoin. NODE's binlog server does it (it must run with
    /// --supervise-mariadb, as `phxctl local` and the Docker image do),
    /// wherever it runs; this shows the progress.
    Rebuild {
        node: String,
        /// A healthy node to copy from (a caught-up replica is best).
        #[arg(long)]
        from: String,
    },
}

#[derive(Subcommand, Debug)]
enum LocalCmd {
    /// Start every node (MariaDB, binlog server, proxy) in the background,
    /// wait for a master, print how to connect.
    Up {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Stop every node cleanly.
    Down {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Same as `phxctl status`.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Default cluster file of `phxctl local`.
const LOCAL_DEFAULT_CONFIG: &str = "configs/cluster-3.yaml";

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phxctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phxctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(given: Option<PathBuf>, local: bool) -> Result<ClusterConfig> {
    let path = given
        .or_else(|| std::env::var_os("PHXSQL_CONFIG").map(PathBuf::from))
        .or_else(|| local.then(|| PathBuf::from(LOCAL_DEFAULT_CONFIG)));
    let Some(path) = path else {
        bail!("no cluster file: pass --config FILE (or set PHXSQL_CONFIG)");
    };
    Ok(ClusterConfig::load(&path)?)
}

async fn run(args: Args) -> Result<()> {
    match args.command {
        Cmd::Init => {
            let cfg = load_config(args.config, false)?;
            init::init(&cfg).await
        }
        Cmd::Status { json } => {
            let cfg = load_config(args.config, false)?;
            status::print(&cfg, json).await
        }
        Cmd::Switchover { to } => {
            let cfg = load_config(args.config, false)?;
            switchover(&cfg, &to).await
        }
        Cmd::Lease {
            action: LeaseCmd::Set { duration },
        } => {
            let cfg = load_config(args.config, false)?;
            lease_set(&cfg, &duration).await
        }
        Cmd::Member { action } => {
            let cfg = load_config(args.config, false)?;
            match action {
                MemberCmd::Add { node, learner } => member::add(&cfg, &node, learner).await,
                MemberCmd::Remove { node } => member::remove(&cfg, &node).await,
            }
        }
        Cmd::Node {
            action: NodeCmd::Rebuild { node, from },
        } => {
            let cfg = load_config(args.config, false)?;
            rebuild::rebuild(&cfg, &node, &from).await
        }
        Cmd::Local { action } => {
            let cfg = load_config(args.config, true)?;
            match action {
                LocalCmd::Up { node } => local::up(&cfg, node.as_deref()).await,
                LocalCmd::Down { node } => local::down(&cfg, node.as_deref()).await,
                LocalCmd::Status { json } => status::print(&cfg, json).await,
            }
        }
    }
}

/// A client of `node`'s admin API with the cluster's token.
pub fn admin(cfg: &ClusterConfig, node: &phxsql_config::NodeConfig) -> AdminClient {
    AdminClient::new(
        node.admin_addr(),
        Some(cfg.credentials.admin_token.expose().to_string()),
        Duration::from_secs(3),
    )
}

/// The lease holder as the first answering node sees it.
pub async fn current_master(cfg: &ClusterConfig) -> Option<String> {
    for node in &cfg.nodes {
        if let Ok(m) = admin(cfg, node).get_json("/master").await
            && let Some(name) = m["master_name"].as_str()
        {
            return Some(name.to_string());
        }
    }
    None
}

/// Waits until `name`'s agent reports the promotion done.
pub async fn wait_promoted(cfg: &ClusterConfig, name: &str, timeout: Duration) -> Result<()> {
    let node = cfg.node(name)?;
    let mut client = admin(cfg, node);
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get_json("/route").await
            && r["agent"]["role"] == "master"
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("{name} did not finish its promotion within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to `timeout`) for a node that holds the lease and finished its
/// promotion; `check` runs between looks (it may fail the wait early), and
/// `note` is printed every 5 s. Returns the master's name.
pub async fn wait_for_master(
    cfg: &ClusterConfig,
    timeout: Duration,
    note: &str,
    mut check: impl FnMut() -> Result<()>,
) -> Result<String> {
    let start = Instant::now();
    let mut last_note = Instant::now();
    loop {
        if let Some(m) = current_master(cfg).await
            && wait_promoted(cfg, &m, Duration::from_millis(200))
                .await
                .is_ok()
        {
            return Ok(m);
        }
        check()?;
        if start.elapsed() > timeout {
            bail!("no master after {timeout:?}");
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            last_note = Instant::now();
            println!("{note} ({} s) ...", start.elapsed().as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn lease_set(cfg: &ClusterConfig, text: &str) -> Result<()> {
    let duration = phxsql_config::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("{text:?} is not a duration (e.g. 3s, 1500ms): {e}"))?;
    let Some(master) = current_master(cfg).await else {
        bail!("no node reports a master: the lease length is changed through the master");
    };
    let ms = duration.as_millis() as u64;
    admin(cfg, cfg.node(&master)?)
        .post_json("/lease", Some(&serde_json::json!({ "duration_ms": ms })))
        .await
        .with_context(|| format!("asking the master {master} to change the lease length"))?;
    // Every answering node times the lease by the new length.
    let start = Instant::now();
    loop {
        let mut behind = Vec::new();
        for node in &cfg.nodes {
            if let Ok(s) = admin(cfg, node).get_json("/status").await
                && s["lease"]["duration_ms"].as_u64() != Some(ms)
            {
                behind.push(node.name.as_str());
            }
        }
        if behind.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "the new lease length has not reached {} yet",
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("lease length is {duration:?} on every node");
    Ok(())
}

async fn switchover(cfg: &ClusterConfig, to: &str) -> Result<()> {
    cfg.node(to)?;
    let Some(master) = current_master(cfg).await else {
        bail!("no node reports a master: nothing to switch over (is an election under way?)");
    };
    if master == to {
        println!("{to} is already the master");
        return Ok(());
    }
    let start = Instant::now();
    let answer = admin(cfg, cfg.node(&master)?)
        .post_json("/switchover", Some(&serde_json::json!({ "to": to })))
        .await
        .with_context(|| format!("asking the master {master} to hand over to {to}"))?;
    wait_promoted(cfg, to, Duration::from_secs(30)).await?;
    println!(
        "switched over from {master} to {to} in {} ms (drained in {} ms)",
        start.elapsed().as_millis(),
        answer["drained_ms"].as_u64().unwrap_or(0)
    );
    Ok(())
}
