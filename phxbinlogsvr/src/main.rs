//! `phxbinlogsvr --config FILE --node NAME`: the binlog server of one node.
//!
//! Starts the Paxos node (event store as its state machine), the write path
//! (a semi-sync replica of the local MariaDB while this node holds the
//! master lease), the replication master for the local replica on
//! `127.0.0.1:<binlog_port>` and the admin HTTP API on `<admin_port>`.
//! Stops on SIGINT/SIGTERM, or with an error if the Paxos node fails.
//! Logs go to stderr (`RUST_LOG`, default `info`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use phxbinlogsvr::server::{Server, ServerOptions};

#[derive(Parser, Debug)]
#[command(
    name = "phxbinlogsvr",
    about = "phxsql binlog server: the local MariaDB binlog replicated through Paxos"
)]
struct Args {
    /// The cluster file (YAML).
    #[arg(long)]
    config: PathBuf,
    /// This node's name in the cluster file.
    #[arg(long)]
    node: String,
    /// Never campaign for the master lease (this node still votes and
    /// follows). For tests and manual set-ups until the agent decides who
    /// may campaign.
    #[arg(long)]
    no_campaign: bool,
    /// Largest transaction proposed as one Paxos value, in bytes; larger
    /// ones are split into parts of at most this size (default 4 MiB, so
    /// that lease renewals get through between parts; maximum 32 MiB,
    /// minimum 64 KiB). For tests and tuning.
    #[arg(long, value_name = "BYTES")]
    max_value_bytes: Option<usize>,
    /// Most Paxos values the write path keeps in flight (default 8; 1 =
    /// one value at a time). For tests and tuning.
    #[arg(long, value_name = "N")]
    max_inflight: Option<usize>,
    /// Run the agent: the local MariaDB's role follows the master lease
    /// (promoted on winning it, demoted to a read-only replica of this
    /// binlog server on losing it) and this node campaigns only while its
    /// MariaDB is up and has applied every chosen transaction. Without it
    /// the MariaDB's role is set up by hand.
    #[arg(long)]
    agent: bool,
    /// Run the local mariadbd under the agent (implies --agent): initialise
    /// its data directory if empty (with the cluster's accounts), start it
    /// as a read-only replica, restart it when it dies, and stop it on
    /// shutdown; it dies with this process.
    #[arg(long)]
    supervise_mariadb: bool,
    /// With the agent: campaign for the lease without a local phxsqlproxy.
    /// By default a node campaigns only while its proxy sends heartbeats
    /// (so that a node whose proxy is dead does not become master); use
    /// this when clients reach MariaDB directly.
    #[arg(long)]
    without_proxy: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phxbinlogsvr: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // The config crate's errors name the file, the key and the problem.
    let cfg = phxsql_config::ClusterConfig::load(&args.config)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let opts = ServerOptions {
        no_campaign: args.no_campaign,
        max_value_bytes: args.max_value_bytes,
        max_inflight: args.max_inflight,
        agent: args.agent || args.supervise_mariadb,
        supervise_mariadb: args.supervise_mariadb,
        without_proxy: args.without_proxy,
    };
    let server = Server::start(&cfg, &args.node, opts)
        .await
        .with_context(|| format!("starting node {}", args.node))?;
    tracing::info!(
        node = %args.node,
        admin = %server.admin_addr,
        binlog = %server.binlog_addr,
        "phxbinlogsvr running"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let result = tokio::select! {
        r = server.wait() => r.map_err(anyhow::Error::from),
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted"); Ok(()) }
        _ = term.recv() => { tracing::info!("terminated"); Ok(()) }
    };
    server.shutdown().await;
    result
}

/// The error and its causes joined with ": ", leaving out a cause whose
/// text the message already holds (many errors print their source too).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
