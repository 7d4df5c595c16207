//! A real cluster: three `paxos-node` processes on loopback TCP, killed with
//! SIGKILL under load and restarted on the same data directory.
//!
//! Every wait polls the nodes' status files against a deadline; nothing sleeps
//! for a fixed time in place of a condition. The deadlines are generous (the
//! machine may be busy building) but the tests finish as soon as the cluster
//! gets there.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use anyhow::{Context, Result, bail, ensure};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 3;
/// Longest wait for any one condition.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const LOAD_PER_SEC: &str = "200";

/// One node process and its files.
struct NodeProc {
    id: u64,
    addr: SocketAddr,
    dir: PathBuf,
    status_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
}

/// The cluster; dropping it kills every node still running (also when a test
/// fails half-way).
struct Cluster {
    /// Taken (and kept on disk) when a scenario fails.
    tmp: Option<tempfile::TempDir>,
    nodes: Vec<NodeProc>,
    extra_args: Vec<String>,
    stop_file: PathBuf,
}

/// A node's status file, parsed.
struct Status(HashMap<String, String>);

impl Status {
    fn num(&self, key: &str) -> u64 {
        self.0.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    fn flag(&self, key: &str) -> bool {
        self.num(key) == 1
    }
}

impl Cluster {
    fn start(extra_args: &[&str]) -> Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        // Reserve free ports, then release them for the nodes to bind.
        let listeners = (0..NODES)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        drop(listeners);
        let nodes = addrs
            .into_iter()
            .enumerate()
            .map(|(i, addr)| {
                let id = i as u64 + 1;
                let dir = tmp.path().join(format!("node{id}"));
                NodeProc {
                    id,
                    addr,
                    status_path: tmp.path().join(format!("node{id}.status")),
                    stderr_path: tmp.path().join(format!("node{id}.stderr")),
                    dir,
                    child: None,
                }
            })
            .collect();
        let stop_file = tmp.path().join("stop-load");
        let mut cluster = Cluster {
            tmp: Some(tmp),
            nodes,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            stop_file,
        };
        for i in 0..NODES {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("--peer={}={}", n.id, n.addr))
            .collect();
        let node = &mut self.nodes[i];
        ensure!(node.child.is_none(), "node {} is already running", node.id);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.stderr_path)?;
        let child = Command::new(env!("CARGO_BIN_EXE_paxos-node"))
            .arg(format!("--id={}", node.id))
            .arg("--cluster-id=77")
            .arg(format!("--listen={}", node.addr))
            .args(&peers)
            .arg(format!("--data-dir={}", node.dir.display()))
            .arg(format!("--load-per-sec={LOAD_PER_SEC}"))
            .arg(format!("--stop-load-file={}", self.stop_file.display()))
            .arg(format!("--status-file={}", node.status_path.display()))
            .args(&self.extra_args)
            .env("RUST_LOG", "info,paxos::transport=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning paxos-node")?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reap the process.
    fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Fails if a node that should be running has exited.
    fn check_alive(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Some(exit) = child.try_wait()?
            {
                node.child = None;
                bail!("node {} exited unexpectedly: {exit}", node.id);
            }
        }
        Ok(())
    }

    /// The status of a running node, written by its current process.
    fn status(&self, i: usize) -> Option<Status> {
        let node = &self.nodes[i];
        let pid = node.child.as_ref()?.id();
        let text = fs::read_to_string(&node.status_path).ok()?;
        let map: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let status = Status(map);
        (status.num("pid") == u64::from(pid)).then_some(status)
    }

    fn statuses(&self) -> Vec<Option<Status>> {
        (0..NODES).map(|i| self.status(i)).collect()
    }

    /// Polls `cond` until it yields a value, a node dies, or the deadline passes.
    fn wait_for<T>(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&Cluster) -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if let Some(v) = cond(self)? {
                eprintln!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
                return Ok(v);
            }
            if start.elapsed() > DEADLINE {
                bail!("timed out after {DEADLINE:?} waiting for {what}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// The master, once it reports at least `min_ok` successful proposals.
    fn wait_master_with_load(&mut self, min_ok: u64, not: Option<usize>) -> Result<usize> {
        self.wait_for("a master with load flowing", |c| {
            Ok((0..NODES).find(|&i| {
                Some(i) != not
                    && c.status(i)
                        .is_some_and(|s| s.flag("is_master") && s.num("proposals_ok") >= min_ok)
            }))
        })
    }

    /// Highest `sm_applied` (next instance to apply) among running nodes.
    fn max_applied(&self) -> u64 {
        self.statuses()
            .iter()
            .flatten()
            .map(|s| s.num("sm_applied"))
            .max()
            .unwrap_or(0)
    }

    /// The complete lines of a node's `applied.log`.
    fn applied_lines(&self, i: usize) -> Result<Vec<String>> {
        let path = self.nodes[i].dir.join("applied.log");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).context(format!("reading {}", path.display())),
        };
        // A line being written right now is not complete yet.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        Ok(complete.lines().map(str::to_string).collect())
    }

    /// Checks every node's log is gap-free and in order, and that all of them
    /// agree on their common prefix. Returns the logs.
    fn check_agreement(&self) -> Result<Vec<Vec<String>>> {
        let logs = (0..NODES)
            .map(|i| self.applied_lines(i))
            .collect::<Result<Vec<_>>>()?;
        for (i, log) in logs.iter().enumerate() {
            check_in_order(log).with_context(|| format!("node {} applied.log", i + 1))?;
        }
        for i in 1..NODES {
            let common = logs[0].len().min(logs[i].len());
            if let Some(at) = (0..common).find(|&k| logs[0][k] != logs[i][k]) {
                bail!(
                    "applied.log of nodes 1 and {} differ at line {}: {:?} vs {:?}",
                    i + 1,
                    at + 1,
                    logs[0][at],
                    logs[i][at]
                );
            }
        }
        Ok(logs)
    }

    /// Waits until every running node has applied `more` instances past the
    /// current highest: the whole cluster, restarted nodes included, keeps going.
    fn wait_progress_everywhere(&mut self, more: u64) -> Result<()> {
        let target = self.max_applied() + more;
        self.wait_for(&format!("every node applied {more} more instances"), |c| {
            Ok(c.statuses()
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.num("sm_applied") >= target))
                .then_some(()))
        })
    }

    fn summary(&self) -> String {
        let keys = [
            "is_master",
            "sm_applied",
            "log_start",
            "proposals_ok",
            "proposals_failed",
            "lease_acquired",
            "checkpoint_installs",
        ];
        let mut out = String::new();
        for (i, s) in self.statuses().iter().enumerate() {
            let Some(s) = s else { continue };
            let fields: Vec<String> = keys.iter().map(|k| format!("{k}={}", s.num(k))).collect();
            out.push_str(&format!("  node {}: {}\n", i + 1, fields.join(" ")));
        }
        out
    }

    fn stop_load(&mut self) -> Result<()> {
        File::create(&self.stop_file)?;
        self.wait_for("load stopped everywhere", |c| {
            Ok(c.statuses()
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.flag("load_stopped")))
                .then_some(()))
        })
    }

    /// Waits until every node reports the same applied instance, then until
    /// their `applied.log` files are identical in full (lease renewals keep
    /// adding instances, so a given moment may catch one node a step ahead).
    fn wait_all_agree(&mut self) -> Result<()> {
        self.wait_for("all nodes report the same applied instance", |c| {
            let applied: Vec<Option<u64>> = c
                .statuses()
                .iter()
                .map(|s| s.as_ref().map(|s| s.num("sm_applied")))
                .collect();
            Ok((applied[0].is_some() && applied.iter().all(|a| *a == applied[0])).then_some(()))
        })?;
        let lines = self.wait_for("identical applied.log files", |c| {
            let logs = c.check_agreement()?;
            Ok(logs.iter().all(|l| *l == logs[0]).then(|| logs[0].len()))
        })?;
        eprintln!(
            "all {NODES} nodes hold the same {lines} applied lines\n{}",
            self.summary()
        );
        Ok(())
    }

    /// The last lines of every node's log output, for a failure report.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = fs::read_to_string(&node.stderr_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            out.push_str(&format!(
                "\n--- node {} (last {} lines) ---\n",
                node.id,
                lines.len() - from
            ));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
            let status = fs::read_to_string(&node.status_path).unwrap_or_default();
            out.push_str(&format!("--- node {} status ---\n{status}", node.id));
        }
        out
    }

    /// Runs a scenario; on failure the error carries the nodes' log tails.
    fn run(mut self, scenario: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
        let result = scenario(&mut self);
        if std::env::var_os("PAXOS_TEST_KEEP").is_some() {
            let kept = self.tmp.take().map(|t| t.keep());
            eprintln!("data kept in {kept:?}");
        }
        if let Err(e) = result {
            let tails = self.log_tails();
            // Keep the directory for a post-mortem.
            let kept = self.tmp.take().map(|t| t.keep());
            bail!("{e:#}\n(data kept in {kept:?}){tails}");
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Lines are `instance<TAB>...`: instances must start at 0 and go up by one,
/// each appearing on consecutive lines (once per item).
fn check_in_order(lines: &[String]) -> Result<()> {
    let mut expect = 0u64;
    for (n, line) in lines.iter().enumerate() {
        let instance: u64 = line
            .split('\t')
            .next()
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("line {}: malformed {line:?}", n + 1))?;
        if instance + 1 == expect {
            continue; // another item of the same instance
        }
        ensure!(
            instance == expect,
            "line {}: instance {instance}, expected {expect}",
            n + 1
        );
        expect += 1;
    }
    Ok(())
}

#[test]
fn follower_killed_under_load_catches_up() -> Result<()> {
    Cluster::start(&[])?.run(|c| {
        let master = c.wait_master_with_load(100, None)?;
        let victim = (master + 1) % NODES;
        eprintln!("master is node {}, killing node {}", master + 1, victim + 1);
        c.kill(victim)?;

        let before = c.max_applied();
        c.wait_for("progress without the killed node", |c| {
            Ok((c.max_applied() >= before + 200).then_some(()))
        })?;
        c.check_agreement()?;

        c.spawn(victim)?;
        let target = c.max_applied();
        c.wait_for("the restarted node caught up", |c| {
            Ok(c.status(victim)
                .is_some_and(|s| s.num("sm_applied") >= target)
                .then_some(()))
        })?;
        c.check_agreement()?;
        c.wait_progress_everywhere(200)?;

        c.stop_load()?;
        c.wait_all_agree()
    })
}

#[test]
fn master_killed_under_load_fails_over_and_catches_up() -> Result<()> {
    // A short log window, so the restarted node is likely to need a checkpoint
    // transfer rather than a log catch-up.
    Cluster::start(&["--keep-instances=100", "--checkpoint-every=20"])?.run(|c| {
        let master = c.wait_master_with_load(100, None)?;
        eprintln!("master is node {}, killing it", master + 1);
        c.kill(master)?;

        let new_master = c.wait_master_with_load(300, Some(master))?;
        eprintln!("node {} took over", new_master + 1);
        c.check_agreement()?;

        c.spawn(master)?;
        let target = c.max_applied();
        c.wait_for("the old master caught up", |c| {
            Ok(c.status(master)
                .is_some_and(|s| s.num("sm_applied") >= target)
                .then_some(()))
        })?;
        c.check_agreement()?;
        let installs = c.status(master).map_or(0, |s| s.num("checkpoint_installs"));
        eprintln!("the old master installed {installs} checkpoint(s)");
        c.wait_progress_everywhere(200)?;

        c.stop_load()?;
        c.wait_all_agree()
    })
}
