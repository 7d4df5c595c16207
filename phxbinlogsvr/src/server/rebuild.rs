//! Rebuilding this node's MariaDB from a peer, in place (`POST /rebuild`,
//! driven by `phxctl node rebuild NODE --from PEER`): for a node reported
//! `diverged`, or a new node whose log the cluster no longer holds from the
//! start. Needs the agent to run `mariadbd` (`--supervise-mariadb`), so it
//! works wherever the node runs (phxctl local, Docker, systemd).
//!
//! 1. **stopping**: the source must be a healthy node (replica or master,
//!    MariaDB up) and the data directory must not be a mount point (it is
//!    replaced by a rename). `Gates::rebuilding` makes the agent leave
//!    MariaDB alone (no start, no campaign, write path closed); once it
//!    confirms, and this node does not hold the lease, `mariadbd` is
//!    stopped.
//! 2. **downloading**: the peer's binlog server makes a physical backup of
//!    its MariaDB (`GET /backup`, `mariadb-backup --stream=xbstream`); it is
//!    saved beside the data directory (`<mariadb_datadir>.rebuild`, so the
//!    final rename stays on one file system) and checked against its length.
//! 3. **preparing**: with enough free space for the extracted copy,
//!    `mbstream -x` and `mariadb-backup --prepare`; the backup's GTID
//!    position is written for the agent to adopt
//!    ([`agent::RESTORED_GTID_FILE`]).
//! 4. The old data directory is kept as `<mariadb_datadir>.before-rebuild`
//!    (`.before-rebuild.N` if that exists: nothing is deleted) and the new
//!    one takes its place; if that second rename fails, the old one is put
//!    back.
//! 5. **starting**: `Gates::rebuilt` then the gate is cleared; the agent
//!    starts `mariadbd`, judges it afresh (which ends `diverged`), adopts
//!    the position and replicates what was chosen since. The rebuild is
//!    `done` once MariaDB answers.
//!
//! A failure before step 4 leaves the data directory as it was (and the
//! verdict on it: a diverged node stays diverged); the agent starts the
//! old MariaDB again. The work directory is removed on failure and at the
//! binlog server's start (a rebuild is never resumed). Progress: `GET
//! /rebuild`. Free space needed on the data directory's file system: about
//! twice the source's data (the stream, then its extracted copy).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use paxos::NodeHandle;
use phxsql_adminapi::AdminClient;
use serde::Serialize;

use super::value::ApplyOutcome;

/// How long the agent may take to confirm it leaves MariaDB alone (it
/// looks every 100 ms; a look may wait on a slow MariaDB).
const AGENT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a download may go without receiving a byte (the peer sends
/// nothing while `mariadb-backup` runs).
const DOWNLOAD_STALL: Duration = Duration::from_secs(600);
/// How long the restored MariaDB may take to start and answer.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Idle,
    /// The source's health, the data directory (nothing stopped yet).
    Checking,
    Stopping,
    Downloading,
    Preparing,
    Starting,
    Done,
    Failed,
}

/// What `GET /rebuild` shows: the running rebuild, or the last one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildProgress {
    pub phase: Phase,
    /// The peer the backup comes from.
    pub from: Option<String>,
    pub received_bytes: u64,
    /// The backup's size, once the peer has made it.
    pub total_bytes: Option<u64>,
    /// The restored GTID position (when done).
    pub gtid: Option<String>,
    /// Where the old data directory was kept (when done).
    pub kept: Option<String>,
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

/// A peer to rebuild from.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: u64,
    pub name: String,
    pub admin: String,
}

/// Everything a rebuild touches; one per node, one rebuild at a time.
pub struct Rebuilder {
    pub me: u64,
    pub peers: Vec<Peer>,
    pub token: String,
    pub mariadb_datadir: PathBuf,
    /// `<mariadb_datadir>.rebuild`.
    work: PathBuf,
    pub gates: agent::Gates,
    pub agent_status: agent::StatusHandle,
    pub supervisor: Arc<agent::Supervisor>,
    pub handle: NodeHandle<ApplyOutcome>,
    progress: Mutex<RebuildProgress>,
}

/// Why a rebuild was not started (the admin API's answer).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
}

impl Rebuilder {
    /// Removes what an interrupted rebuild left (it is never resumed).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: u64,
        peers: Vec<Peer>,
        token: String,
        mariadb_datadir: PathBuf,
        gates: agent::Gates,
        agent_status: agent::StatusHandle,
        supervisor: Arc<agent::Supervisor>,
        handle: NodeHandle<ApplyOutcome>,
    ) -> Self {
        let work = beside(&mariadb_datadir, ".rebuild");
        if work.exists() {
            tracing::warn!(dir = %work.display(), "removing what an interrupted rebuild left");
            let _ = fs::remove_dir_all(&work);
        }
        Rebuilder {
            me,
            peers,
            token,
            mariadb_datadir,
            work,
            gates,
            agent_status,
            supervisor,
            handle,
            progress: Mutex::new(RebuildProgress::default()),
        }
    }

    pub fn progress(&self) -> RebuildProgress {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RebuildProgress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn holds_lease(&self) -> bool {
        self.handle.master().is_some_and(|(id, _)| id == self.me)
    }

    /// Starts a rebuild from `from` (a node name) in the background.
    pub fn start(self: &Arc<Self>, from: &str) -> Result<RebuildProgress, StartError> {
        let Some(peer) = self.peers.iter().find(|p| p.name == from).cloned() else {
            return Err(StartError::BadRequest(format!(
                "no node {from:?} in the cluster file"
            )));
        };
        if peer.id == self.me {
            return Err(StartError::BadRequest(
                "a node cannot be rebuilt from itself".into(),
            ));
        }
        if self.holds_lease() {
            return Err(StartError::Conflict(
                "this node holds the master lease: switch over to another node first".into(),
            ));
        }
        let started = {
            let mut p = self.lock();
            if matches!(
                p.phase,
                Phase::Checking
                    | Phase::Stopping
                    | Phase::Downloading
                    | Phase::Preparing
                    | Phase::Starting
            ) {
                return Err(StartError::Conflict(
                    "a rebuild is already running on this node".into(),
                ));
            }
            *p = RebuildProgress {
                phase: Phase::Checking,
                from: Some(peer.name.clone()),
                ..RebuildProgress::default()
            };
            p.clone()
        };
        tracing::info!(from = %peer.name, "rebuild: starting");
        let me = Arc::clone(self);
        tokio::spawn(async move { me.run(peer).await });
        Ok(started)
    }

    async fn run(self: Arc<Self>, peer: Peer) {
        let t0 = Instant::now();
        let result = self.steps(&peer, t0).await;
        if let Err(f) = &result {
            if f.hands_off {
                // No data directory to start: the agent keeps its hands off
                // until an operator has put one back and restarted the node.
                tracing::error!(error = %f.message, "rebuild failed; MariaDB stays stopped");
                let mut p = self.lock();
                p.phase = Phase::Failed;
                p.error = Some(f.message.clone());
                p.elapsed_ms = t0.elapsed().as_millis() as u64;
                return;
            }
            let _ = fs::remove_dir_all(&self.work);
        }
        // The agent takes MariaDB back: the new data directory if it was
        // swapped in (and then judged afresh), else the old one, as it was.
        self.gates.rebuilt.store(result.is_ok(), Ordering::Release);
        self.gates.rebuilding.store(false, Ordering::Release);
        let result = match result {
            Ok(done) => self.wait_started(t0).await.map(|()| done),
            Err(Failure { message: e, .. }) => {
                // Let the agent leave its hands-off mode before another
                // rebuild may start (it confirms within a look).
                let _ = self
                    .wait_agent(
                        t0,
                        AGENT_CONFIRM_TIMEOUT,
                        |s| !s.rebuilding,
                        "take MariaDB back",
                    )
                    .await;
                Err(e)
            }
        };
        let mut p = self.lock();
        p.elapsed_ms = t0.elapsed().as_millis() as u64;
        match result {
            Ok(Restored { gtid, kept }) => {
                tracing::info!(from = %peer.name, %gtid, secs = t0.elapsed().as_secs_f64(), "rebuild: done");
                p.phase = Phase::Done;
                p.gtid = Some(gtid);
                p.kept = kept.map(|k| k.display().to_string());
            }
            Err(e) => {
                tracing::error!(from = %peer.name, error = %e, "rebuild failed");
                p.phase = Phase::Failed;
                p.error = Some(e);
            }
        }
    }

    /// Waits (polling) until the agent's status satisfies `ok`.
    async fn wait_agent(
        &self,
        t0: Instant,
        timeout: Duration,
        ok: impl Fn(&agent::AgentStatus) -> bool,
        what: &str,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !ok(&self.agent_status.get()) {
            if Instant::now() >= deadline {
                return Err(format!("the agent did not {what} within {timeout:?}"));
            }
            self.lock().elapsed_ms = t0.elapsed().as_millis() as u64;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Step 5: the agent starts the restored MariaDB and adopts its GTID
    /// position (it removes the marker file then).
    async fn wait_started(&self, t0: Instant) -> Result<(), String> {
        let sup = Arc::clone(&self.supervisor);
        self.wait_agent(
            t0,
            START_TIMEOUT,
            move |s| !s.rebuilding && s.mariadb_up && sup.restored_position().is_none(),
            "start MariaDB and adopt its GTID position",
        )
        .await
        .map_err(|e| {
            let last = self.agent_status.get().last_error;
            format!(
                "{e} (agent: {}): the restored data directory is in place; see {} and this node's log",
                last.as_deref().unwrap_or("no error reported"),
                self.supervisor.error_log().display()
            )
        })
    }

    fn set_phase(&self, phase: Phase, t0: Instant) {
        tracing::info!(?phase, "rebuild");
        let mut p = self.lock();
        p.phase = phase;
        p.elapsed_ms = t0.elapsed().as_millis() as u64;
    }

    /// Steps 1-4.
    async fn steps(&self, peer: &Peer, t0: Instant) -> Result<Restored, Failure> {
        // 1. Checks that need nothing stopped.
        let mut client = AdminClient::new(
            peer.admin.clone(),
            Some(self.token.clone()),
            Duration::from_secs(10),
        );
        let route = client
            .get_json("/route")
            .await
            .map_err(|e| format!("asking {} whether it is healthy: {e}", peer.name))?;
        let role = route["agent"]["role"].as_str().unwrap_or("unknown");
        if !matches!(role, "replica" | "master") || route["agent"]["mariadb_up"] != true {
            return Err(format!(
                "{} is not a healthy source (role {role}); pick a replica that is caught up",
                peer.name
            )
            .into());
        }
        check_not_mount_point(&self.mariadb_datadir)?;

        // The agent lets go of MariaDB; then it is stopped.
        self.set_phase(Phase::Stopping, t0);
        self.gates.rebuilt.store(false, Ordering::Release);
        self.gates.rebuilding.store(true, Ordering::Release);
        self.wait_agent(t0, AGENT_CONFIRM_TIMEOUT, |s| s.rebuilding, "confirm")
            .await?;
        if self.holds_lease() {
            return Err(
                "this node took the master lease meanwhile: switch over to another node first"
                    .into(),
            );
        }
        let sup = Arc::clone(&self.supervisor);
        tokio::task::spawn_blocking(move || sup.stop(Duration::from_secs(60)))
            .await
            .map_err(|e| format!("stopping mariadbd: {e}"))?;

        // 2. The peer's backup.
        self.set_phase(Phase::Downloading, t0);
        let _ = fs::remove_dir_all(&self.work);
        fs::create_dir_all(&self.work)
            .map_err(|e| format!("creating {}: {e}", self.work.display()))?;
        let file = self.work.join("backup.xbs");
        let mut last_log = Instant::now();
        let got = client
            .download("/backup", &file, DOWNLOAD_STALL, |done, total| {
                // Before anything is written: room for the stream and its
                // extracted copy (a full disk would also stop this node's
                // Paxos log, which shares it by default).
                if done == 0
                    && let Some(total) = total
                {
                    let free = free_bytes(&self.work)?;
                    let need = total.saturating_mul(21) / 10;
                    if free < need {
                        return Err(format!(
                            "not enough free space in {} for a backup of {} MiB: {} MiB free, about {} MiB needed (the stream and its extracted copy)",
                            self.work.display(),
                            total >> 20,
                            free >> 20,
                            need >> 20
                        ));
                    }
                }
                let mut p = self.lock();
                p.received_bytes = done;
                p.total_bytes = total;
                p.elapsed_ms = t0.elapsed().as_millis() as u64;
                drop(p);
                if last_log.elapsed() >= Duration::from_secs(5) {
                    last_log = Instant::now();
                    tracing::info!(bytes = done, total, "rebuild: downloading");
                }
                Ok(())
            })
            .await
            .map_err(|e| format!("downloading the backup of {}: {e}", peer.name))?;
        tracing::info!(bytes = got, from = %peer.name, "rebuild: backup received");

        // 3. Extract and prepare.
        self.set_phase(Phase::Preparing, t0);
        let work = self.work.clone();
        let staged = self.work.join("datadir");
        let gtid = {
            let staged = staged.clone();
            tokio::task::spawn_blocking(move || prepare(&work, &file, &staged))
                .await
                .map_err(|e| format!("preparing the backup: {e}"))??
        };

        // 4. Swap the data directories (the agent has not restarted
        // mariadbd: it is told to leave it alone).
        if self.supervisor.is_running() {
            return Err("mariadbd is running again; the data directory was not touched".into());
        }
        let datadir = &self.mariadb_datadir;
        let kept = datadir
            .exists()
            .then(|| free_name(&beside(datadir, ".before-rebuild")));
        if let Some(old) = &kept {
            fs::rename(datadir, old)
                .map_err(|e| format!("moving {} to {}: {e}", datadir.display(), old.display()))?;
        }
        if let Err(e) = fs::rename(&staged, datadir) {
            let failed = format!("moving the rebuilt data to {}: {e}", datadir.display());
            return Err(match &kept {
                None => failed.into(),
                Some(old) => match fs::rename(old, datadir) {
                    Ok(()) => format!("{failed}; the old data directory is back in place").into(),
                    Err(e2) => Failure {
                        message: format!(
                            "{failed}; putting the old data directory back failed too ({e2}): \
                             MariaDB stays stopped; stop the node, move {} back to {}, start it",
                            old.display(),
                            datadir.display()
                        ),
                        hands_off: true,
                    },
                },
            });
        }
        let _ = fs::remove_dir_all(&self.work);
        self.set_phase(Phase::Starting, t0);
        Ok(Restored { gtid, kept })
    }
}

/// A rebuild that swapped in a new data directory.
struct Restored {
    gtid: String,
    /// Where the old data directory went (none on a new node).
    kept: Option<PathBuf>,
}

/// Why a rebuild failed.
struct Failure {
    message: String,
    /// There is no data directory to start (a swap and its undo both
    /// failed): the agent must keep its hands off.
    hands_off: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            hands_off: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// `path` with `suffix` appended to its last component.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// `path`, or `path.1`, `path.2`, ...: the first that does not exist.
fn free_name(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_path_buf();
    }
    (1..)
        .map(|n| beside(path, &format!(".{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.to_path_buf())
}

/// The data directory is replaced by renames: it must not be a mount
/// point (the rename would fail, after the whole download).
fn check_not_mount_point(datadir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(datadir) else {
        return Ok(()); // a new node: nothing there yet
    };
    let parent = datadir.parent().unwrap_or(Path::new("/"));
    let parent_meta =
        fs::metadata(parent).map_err(|e| format!("reading {}: {e}", parent.display()))?;
    if meta.dev() != parent_meta.dev() {
        return Err(format!(
            "{} is a mount point; a rebuild replaces the directory by renaming it: \
             make mariadb_datadir a directory inside the mounted file system",
            datadir.display()
        ));
    }
    Ok(())
}

/// Bytes available to this process on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64, String> {
    let st = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Extracts `file` into `staged`, prepares it, and records its GTID
/// position for the agent; returns that position.
fn prepare(work: &Path, file: &Path, staged: &Path) -> Result<String, String> {
    fs::create_dir_all(staged).map_err(|e| format!("creating {}: {e}", staged.display()))?;
    let input = fs::File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
    run(
        Command::new("mbstream")
            .args(["-x", "-C"])
            .arg(staged)
            .stdin(Stdio::from(input)),
        "mbstream -x",
        &work.join("mbstream.log"),
    )?;
    let _ = fs::remove_file(file);
    run(
        Command::new("mariadb-backup")
            .arg("--prepare")
            .arg(format!("--target-dir={}", staged.display()))
            .stdin(Stdio::null()),
        "mariadb-backup --prepare",
        &work.join("prepare.log"),
    )?;
    let gtid = backup_gtid(staged)?;
    let marker = staged.join(agent::RESTORED_GTID_FILE);
    fs::write(&marker, format!("{gtid}\n"))
        .map_err(|e| format!("writing {}: {e}", marker.display()))?;
    Ok(gtid)
}

/// Runs `cmd`, its output to `log`; a failure quotes the log's last lines.
fn run(cmd: &mut Command, what: &str, log: &Path) -> Result<(), String> {
    let out = fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let status = cmd
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| format!("running {what} (Debian package mariadb-backup): {e}"))?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what} failed ({status}): {}", tail.join(" | ")));
    }
    Ok(())
}

/// The backup's GTID position, from `xtrabackup_binlog_info` (MariaDB
/// 10.x; `mariadb_backup_binlog_info` from 11.x): `<binlog file>
/// <position> <gtid position>`.
pub fn backup_gtid(datadir: &Path) -> Result<String, String> {
    for name in ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"] {
        let path = datadir.join(name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        return parse_binlog_info(&text)
            .ok_or_else(|| format!("{}: no GTID position in {text:?}", path.display()));
    }
    Err(format!(
        "{}: the backup has no binary log position (is log_bin on at the peer?)",
        datadir.display()
    ))
}

fn parse_binlog_info(text: &str) -> Option<String> {
    let gtid = text.split_whitespace().nth(2)?;
    Some(gtid.to_string())
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
