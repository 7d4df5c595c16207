//! `phxsqlproxy --config FILE --node NAME`: the read-write and read-only
//! MySQL ports of one node (see the library docs).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use phxsqlproxy::Proxy;

#[derive(Parser, Debug)]
#[command(
    name = "phxsqlproxy",
    about = "phxsql proxy: a read-write port routed to the master, a read-only port served by a healthy replica"
)]
struct Args {
    /// The cluster file (YAML).
    #[arg(long)]
    config: PathBuf,
    /// This node's name in the cluster file.
    #[arg(long)]
    node: String,
    /// Runtime threads relaying connections (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phxsqlproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phxsqlproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything else: a SIGHUP during start-up must not kill us.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let loaded = FileStamp::of(&args.config);
    let cfg = phxsql_config::ClusterConfig::load(&args.config)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let mut proxy = Proxy::start(&cfg, &args.node)
        .await
        .with_context(|| format!("starting the proxy of node {}", args.node))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let _watch = AbortOnDrop(tokio::spawn(watch_config(
        args.config.clone(),
        loaded,
        proxy.reloader(),
        hangup,
    )));
    let result = tokio::select! {
        r = proxy.wait() => r.map_err(anyhow::Error::from),
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted"); Ok(()) }
        _ = term.recv() => { tracing::info!("terminated"); Ok(()) }
    };
    proxy.shutdown().await;
    result
}

/// How often the cluster file's modification time is checked.
const CONFIG_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What tells a changed file: modification time, length, inode and
/// change time (tools that keep the source's mtime still change the inode
/// or ctime; a rewrite within one mtime tick mostly changes the length).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Option<(std::time::SystemTime, u64, u64, i64, i64)>);

impl FileStamp {
    fn of(path: &PathBuf) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(std::fs::metadata(path).ok().and_then(|m| {
            Some((
                m.modified().ok()?,
                m.len(),
                m.ino(),
                m.ctime(),
                m.ctime_nsec(),
            ))
        }))
    }
}

/// Re-reads the cluster file when it changes (checked every
/// [`CONFIG_CHECK_INTERVAL`]) or on SIGHUP, and applies its node list. A
/// file that does not load is reported (file, key, problem), the running
/// node list is kept, and it is read again until it loads (a half-written
/// file is followed by the whole one).
async fn watch_config(
    path: PathBuf,
    mut seen: FileStamp,
    reloader: phxsqlproxy::Reloader,
    mut hangup: tokio::signal::unix::Signal,
) {
    let mut failing = false;
    loop {
        let forced = tokio::select! {
            _ = hangup.recv() => true,
            _ = tokio::time::sleep(CONFIG_CHECK_INTERVAL) => false,
        };
        let now = FileStamp::of(&path);
        if !forced && !failing && now == seen {
            continue;
        }
        match phxsql_config::ClusterConfig::load(&path) {
            Ok(cfg) => {
                seen = now;
                failing = false;
                match reloader.apply(&cfg) {
                    Ok(true) => {}
                    Ok(false) if forced => tracing::info!("SIGHUP: the node list is unchanged"),
                    Ok(false) => {}
                    Err(e) => tracing::error!("{e}; keeping the running node list"),
                }
            }
            Err(e) => {
                // Said once per version of the file, retried every check.
                if !failing || now != seen || forced {
                    tracing::error!("{e}; keeping the running node list");
                }
                seen = now;
                failing = true;
            }
        }
    }
}
