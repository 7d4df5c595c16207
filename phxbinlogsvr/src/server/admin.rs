//! The admin HTTP API (axum). Read-only, unauthenticated: `GET /status`,
//! `/master`, `/members`, `/route`, `/metrics`. With the cluster's
//! `admin_api` token as `Authorization: Bearer <token>`: `POST /switchover`,
//! `POST /members` (membership changes, on the master), `POST
//! /proxy/heartbeat`, `GET /backup` (a physical backup of the local
//! MariaDB, for a peer's rebuild) and `POST /rebuild {"from": PEER}`
//! (re-seed this node's MariaDB from PEER's backup; progress: `GET
//! /rebuild`; see [`super::rebuild`]).
//!
//! `/metrics` is Prometheus text exposition format written by hand: the
//! counters already live in plain structs (`paxos::NodeCounters`,
//! `MasterStats`, the write path's atomics), so a registry crate would only
//! copy them; a `# TYPE` line per metric and `name{labels} value` lines are
//! all a scraper needs.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mysql_async::prelude::Queryable;
use paxos::NodeHandle;
use serde_json::{Value, json};

use super::state_machine::Progress;
use super::value::ApplyOutcome;
use super::write_path::WriteMetrics;
use crate::master::MasterMetrics;

/// Everything the handlers read.
pub struct AdminState {
    pub cluster: String,
    pub node_name: String,
    pub node_id: u64,
    /// Node id -> name, from the cluster file.
    pub names: Vec<(u64, String)>,
    pub handle: NodeHandle<ApplyOutcome>,
    pub progress: Arc<Progress>,
    pub write: Arc<WriteMetrics>,
    pub master: Arc<MasterMetrics>,
    /// Control connection to the local MariaDB (admin account).
    pub mariadb: mysql_async::Opts,
    /// The agent, when it runs.
    pub agent: Option<AgentControl>,
    /// The local proxy's heartbeats (`POST /proxy/heartbeat`).
    pub proxy: agent::ProxyLiveness,
    /// The `admin_api` token (mutating endpoints).
    pub token: String,
    /// Every voter's id and admin address (a switchover asks its target).
    pub voters: Vec<(u64, String)>,
    /// Where `GET /backup` stages its backup (`<data_dir>/backup`).
    pub backup_dir: std::path::PathBuf,
    /// One backup at a time.
    pub backup_busy: tokio::sync::Mutex<()>,
    /// Rebuilding this node's MariaDB (`POST /rebuild`); only when the
    /// agent runs it (`--supervise-mariadb`).
    pub rebuild: Option<Arc<super::rebuild::Rebuilder>>,
}

/// What the switchover needs of the agent.
#[derive(Debug, Clone)]
pub struct AgentControl {
    pub status: agent::StatusHandle,
    pub gates: agent::Gates,
    pub mariadb: agent::LocalMariaDb,
}

/// Longest time a switchover waits for the master to drain (its last
/// commits acknowledged) and the target to be caught up, before it gives
/// up and lets writes resume.
pub const SWITCHOVER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl AdminState {
    /// The lease as this node sees it (`/status` and `/route`).
    fn lease_json(&self) -> Value {
        let lease = self.handle.master();
        json!({
            "master": lease.map(|(id, _)| id),
            "master_name": lease.and_then(|(id, _)| self.name_of(id)),
            "remaining_ms": lease.map(|(_, d)| d.as_millis() as u64),
            "version": self.handle.lease_version(),
            "duration_ms": self.handle.lease_duration().as_millis() as u64,
        })
    }

    fn name_of(&self, id: u64) -> Option<&str> {
        self.names
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.as_str())
    }
}

/// The router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/master", get(master))
        .route("/members", get(members).post(change_members))
        .route("/metrics", get(metrics))
        .route("/switchover", post(switchover))
        .route("/route", get(route))
        .route("/lease", post(set_lease))
        .route("/backup", get(backup))
        .route("/rebuild", get(rebuild_progress).post(start_rebuild))
        .route("/proxy/heartbeat", post(proxy_heartbeat))
        .with_state(state)
}

async fn mariadb_gtid_current_pos(opts: &mysql_async::Opts) -> Result<String, String> {
    let work = async {
        let mut conn = mysql_async::Conn::new(opts.clone())
            .await
            .map_err(|e| e.to_string())?;
        let pos: Option<String> = conn
            .query_first("SELECT @@GLOBAL.gtid_current_pos")
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        Ok(pos.unwrap_or_default())
    };
    match tokio::time::timeout(Duration::from_secs(1), work).await {
        Ok(r) => r,
        Err(_) => Err("timed out".into()),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

async fn status(State(s): State<Arc<AdminState>>) -> Response {
    let st = match s.handle.status().await {
        Ok(st) => st,
        Err(e) => return internal(e),
    };
    let is_master = s.handle.is_master();
    let p = s.progress.snapshot();
    let (mariadb_pos, mariadb_error) = match mariadb_gtid_current_pos(&s.mariadb).await {
        Ok(pos) => (Value::String(pos), Value::Null),
        Err(e) => (Value::Null, Value::String(e)),
    };
    Json(json!({
        "cluster": s.cluster,
        "node": s.node_name,
        "node_id": s.node_id,
        "role": if is_master { "master" } else { "follower" },
        "is_master": is_master,
        "lease": s.lease_json(),
        "paxos": {
            "chosen_prefix": st.chosen_prefix,
            "applied": st.applied,
            "log_start": st.log_start,
            "queued": st.queued,
            "inflight": st.inflight,
            "bootstrapping": st.bootstrapping,
        },
        "store": {
            "checkpoint": p.checkpoint,
            "last_gtid_pos": p.pos.to_string(),
            "rolling_checksum": p.checksum,
            "end_index": p.end_index,
        },
        "write_path": {
            "active": s.write.active.load(Ordering::Relaxed) == 1,
            "transactions_acked": s.write.transactions_acked.load(Ordering::Relaxed),
        },
        "mariadb": {
            "gtid_current_pos": mariadb_pos,
            "error": mariadb_error,
        },
        "agent": s.agent.as_ref().map(|a| a.status.get()),
    }))
    .into_response()
}

/// `GET /route`: what a proxy needs to route, polled several times a second
/// by every proxy of the cluster, so it reads only memory (no MariaDB
/// query, no Paxos round): the lease as this node sees it, and the agent's
/// view of the local MariaDB (role, up, lag).
async fn route(State(s): State<Arc<AdminState>>) -> Response {
    Json(json!({
        "node": s.node_name,
        "node_id": s.node_id,
        "lease": s.lease_json(),
        "agent": s.agent.as_ref().map(|a| a.status.get()),
    }))
    .into_response()
}

/// `POST /members`: a membership change, sent to the master (admin token).
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum MemberRequest {
    /// A node that receives every value without voting (it catches up).
    AddLearner { node: u64, paxos_addr: String },
    /// A learner that votes from now on.
    Promote { node: u64 },
    /// A voter or learner that leaves.
    Remove { node: u64 },
}

async fn change_members(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Json(req): Json<MemberRequest>,
) -> Response {
    if !authorized(&headers, &s.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    if !s.handle.is_master() {
        let hint = s
            .handle
            .master()
            .and_then(|(id, _)| s.name_of(id))
            .map_or("no master is known now".to_string(), |m| {
                format!("the master is {m}")
            });
        return error(
            StatusCode::CONFLICT,
            format!("membership changes go to the master; {hint}"),
        );
    }
    let st = match s.handle.status().await {
        Ok(st) => st,
        Err(e) => return internal(e),
    };
    let m = &st.membership;
    let op = match req {
        MemberRequest::AddLearner { node, paxos_addr } => {
            if m.voters.contains_key(&node) || m.learners.contains_key(&node) {
                return error(
                    StatusCode::CONFLICT,
                    format!("node {node} is a member already"),
                );
            }
            paxos::MembershipOp::AddLearner {
                node,
                addr: paxos_addr,
            }
        }
        MemberRequest::Promote { node } => {
            if !m.learners.contains_key(&node) {
                return error(
                    StatusCode::CONFLICT,
                    format!("node {node} is not a learner: add it first"),
                );
            }
            paxos::MembershipOp::Promote { node }
        }
        MemberRequest::Remove { node } => {
            if node == s.node_id {
                return error(
                    StatusCode::CONFLICT,
                    "the master cannot remove itself: switch over first",
                );
            }
            if !m.voters.contains_key(&node) && !m.learners.contains_key(&node) {
                return error(StatusCode::CONFLICT, format!("node {node} is not a member"));
            }
            if m.voters.contains_key(&node) && m.voters.len() <= 2 {
                return error(
                    StatusCode::CONFLICT,
                    "removing it would leave one voter: a cluster needs a majority of two or more to survive a failure",
                );
            }
            paxos::MembershipOp::Remove { node }
        }
    };
    tracing::info!(?op, version = m.version, "membership change requested");
    let change = paxos::MembershipChange {
        expect_version: m.version,
        op,
    };
    match s.handle.propose_membership(change).await {
        Ok(at) => Json(json!({"version": m.version + 1, "instance": at})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /backup` (admin token): a full physical backup of this node's
/// MariaDB (`mariadb-backup --backup --stream=xbstream`), the seed of
/// `phxctl node rebuild`. Staged to a file first, so the answer carries a
/// Content-Length (the receiver can tell a complete backup from a cut one)
/// and a failed backup is an error status, not a truncated body. The file is
/// unlinked once open: its space goes when the download ends.
async fn backup(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &s.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    let Ok(_busy) = s.backup_busy.try_lock() else {
        return error(
            StatusCode::CONFLICT,
            "a backup is already running on this node",
        );
    };
    let dir = s.backup_dir.clone();
    let opts = s.mariadb.clone();
    let t0 = std::time::Instant::now();
    tracing::info!("backup for a rebuild: starting mariadb-backup");
    let made = tokio::task::spawn_blocking(move || run_mariadb_backup(&dir, &opts)).await;
    let path = match made {
        Ok(Ok(path)) => path,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "backup failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        Err(e) => return internal(e),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return internal(format!("opening {}: {e}", path.display())),
    };
    let _ = std::fs::remove_file(&path);
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return internal(e),
    };
    tracing::info!(
        bytes = len,
        secs = t0.elapsed().as_secs_f64(),
        "backup for a rebuild: made; sending"
    );
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

/// `POST /rebuild {"from": "<node name>"}`: starts rebuilding this node's
/// MariaDB from that peer's backup (202 and the progress).
#[derive(Debug, serde::Deserialize)]
struct RebuildRequest {
    from: String,
}

async fn start_rebuild(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&headers, &s.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    let req: RebuildRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"from\": \"<node name>\"}}: {e}"),
            );
        }
    };
    let Some(rebuilder) = &s.rebuild else {
        return error(
            StatusCode::CONFLICT,
            "rebuilding needs this node's MariaDB run by the agent (phxbinlogsvr --supervise-mariadb)",
        );
    };
    match rebuilder.start(&req.from) {
        Ok(progress) => (StatusCode::ACCEPTED, Json(progress)).into_response(),
        Err(e @ super::rebuild::StartError::BadRequest(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ super::rebuild::StartError::Conflict(_)) => error(StatusCode::CONFLICT, e),
    }
}

/// `GET /rebuild`: the running (or last) rebuild.
async fn rebuild_progress(State(s): State<Arc<AdminState>>) -> Response {
    match &s.rebuild {
        Some(r) => Json(r.progress()).into_response(),
        None => Json(super::rebuild::RebuildProgress::default()).into_response(),
    }
}

/// Runs `mariadb-backup` against the local MariaDB into `dir/backup.xbs`.
/// The credentials go in a private option file, never on the command line.
fn run_mariadb_backup(
    dir: &std::path::Path,
    opts: &mysql_async::Opts,
) -> Result<std::path::PathBuf, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_dir_all(dir);
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let cnf = dir.join("client.cnf");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&cnf)
        .map_err(|e| format!("creating {}: {e}", cnf.display()))?;
    writeln!(
        f,
        "[client]\nhost={}\nport={}\nuser={}\npassword={}",
        opts.ip_or_hostname(),
        opts.tcp_port(),
        opts.user().unwrap_or_default(),
        opts.pass().unwrap_or_default()
    )
    .map_err(|e| format!("writing {}: {e}", cnf.display()))?;
    drop(f);
    let out_path = dir.join("backup.xbs");
    let out = std::fs::File::create(&out_path)
        .map_err(|e| format!("creating {}: {e}", out_path.display()))?;
    let log_path = dir.join("mariadb-backup.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let status = std::process::Command::new("mariadb-backup")
        .arg(format!("--defaults-extra-file={}", cnf.display()))
        .args(["--backup", "--stream=xbstream"])
        .arg(format!("--target-dir={}", tmp.display()))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(log)
        .status();
    let _ = std::fs::remove_file(&cnf);
    let status = status
        .map_err(|e| format!("running mariadb-backup (Debian package mariadb-backup): {e}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "mariadb-backup failed ({status}): {}",
            tail.join(" | ")
        ));
    }
    Ok(out_path)
}

/// `POST /lease {"duration_ms": N}` (admin token, on the master): the
/// cluster's lease length from now on (see `paxos::Core::set_lease_duration`).
#[derive(Debug, serde::Deserialize)]
struct LeaseRequest {
    duration_ms: u64,
}

async fn set_lease(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Json(req): Json<LeaseRequest>,
) -> Response {
    if !authorized(&headers, &s.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    if !s.handle.is_master() {
        return error(
            StatusCode::CONFLICT,
            "the lease length is changed on the master",
        );
    }
    let duration = Duration::from_millis(req.duration_ms);
    // A renewal may be in flight: it is refused then, so try a few times.
    let mut last = None;
    for _ in 0..20 {
        match s.handle.set_lease_duration(duration).await {
            Ok(at) => {
                tracing::info!(?duration, at, "lease length changed");
                return Json(json!({"duration_ms": req.duration_ms, "instance": at}))
                    .into_response();
            }
            Err(paxos::ProposeFailed::Core(paxos::ProposeError::Rejected(why)))
                if why.contains("in flight") =>
            {
                last = Some(why);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return error(StatusCode::CONFLICT, e),
        }
    }
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        last.unwrap_or_else(|| "try again".into()),
    )
}

/// `POST /proxy/heartbeat`: the local proxy is alive (admin token).
async fn proxy_heartbeat(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &s.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    s.proxy.beat();
    StatusCode::NO_CONTENT.into_response()
}

async fn master(State(s): State<Arc<AdminState>>) -> Response {
    let lease = s.handle.master();
    Json(json!({
        "master": lease.map(|(id, _)| id),
        "master_name": lease.and_then(|(id, _)| s.name_of(id)),
        "remaining_ms": lease.map(|(_, d)| d.as_millis() as u64),
        "is_me": s.handle.is_master(),
    }))
    .into_response()
}

async fn members(State(s): State<Arc<AdminState>>) -> Response {
    let st = match s.handle.status().await {
        Ok(st) => st,
        Err(e) => return internal(e),
    };
    let list = |m: &std::collections::BTreeMap<u64, String>| -> Vec<Value> {
        m.iter()
            .map(|(id, addr)| json!({"id": id, "name": s.name_of(*id), "paxos_addr": addr}))
            .collect()
    };
    Json(json!({
        "version": st.membership.version,
        "voters": list(&st.membership.voters),
        "learners": list(&st.membership.learners),
    }))
    .into_response()
}

struct Prom {
    out: String,
    labels: String,
}

impl Prom {
    fn metric(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        let _ = writeln!(self.out, "{name}{{{}}} {value}", self.labels);
    }
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.metric(name, "counter", help, value);
    }
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.metric(name, "gauge", help, value);
    }
}

/// The metrics in Prometheus text format.
pub fn render_metrics(s: &AdminState) -> String {
    let mut m = Prom {
        out: String::new(),
        labels: format!(
            "cluster=\"{}\",node=\"{}\"",
            s.cluster.replace('"', ""),
            s.node_name
        ),
    };
    let c = s.handle.counters();
    m.gauge(
        "phxbinlogsvr_is_master",
        "1 while this node holds the master lease",
        u64::from(s.handle.is_master()),
    );
    let core = &c.core;
    for (name, v) in [
        ("prepares_sent", core.prepares_sent),
        ("prepares_won", core.prepares_won),
        ("accepts_sent", core.accepts_sent),
        ("accept_retries", core.accept_retries),
        ("rejections_received", core.rejections_received),
        (
            "instances_chosen_as_leader",
            core.instances_chosen_as_leader,
        ),
        ("instances_learned", core.instances_learned),
        ("items_proposed", core.items_proposed),
        ("items_chosen", core.items_chosen),
        ("proposals_failed", core.proposals_failed),
        ("proposals_timed_out", core.proposals_timed_out),
        ("catch_up_requests_sent", core.catch_up_requests_sent),
        ("catch_up_bytes_received", core.catch_up_bytes_received),
        ("checkpoint_installs", core.checkpoint_installs),
        ("lease_campaigns", core.lease_campaigns),
        ("lease_acquired", core.lease_acquired),
        ("lease_renewals", core.lease_renewals),
        ("lease_lost", core.lease_lost),
        ("membership_changes", core.membership_changes),
        ("compactions", core.compactions),
    ] {
        m.counter(
            &format!("phxbinlogsvr_paxos_{name}_total"),
            "Paxos core counter",
            v,
        );
    }
    let t = &c.transport;
    for (name, v) in [
        ("frames_sent", t.frames_sent),
        ("frames_received", t.frames_received),
        ("bytes_sent", t.bytes_sent),
        ("bytes_received", t.bytes_received),
        ("dropped_foreign_cluster", t.dropped_foreign_cluster),
        ("dropped_unknown_peer", t.dropped_unknown_peer),
        ("dropped_queue_full", t.dropped_queue_full),
        ("malformed_frames", t.malformed_frames),
        ("connects", t.connects),
        ("connect_failures", t.connect_failures),
    ] {
        m.counter(
            &format!("phxbinlogsvr_transport_{name}_total"),
            "Paxos transport counter",
            v,
        );
    }
    let r = &c.runtime;
    for (name, v) in [
        ("log_syncs", r.log_syncs),
        ("records_appended", r.records_appended),
        ("instances_applied", r.instances_applied),
        ("items_applied", r.items_applied),
        ("checkpoints_installed", r.checkpoints_installed),
    ] {
        m.counter(
            &format!("phxbinlogsvr_runtime_{name}_total"),
            "Paxos runtime counter",
            v,
        );
    }
    let p = s.progress.snapshot();
    m.gauge(
        "phxbinlogsvr_store_checkpoint",
        "every instance below is in the event store",
        p.checkpoint,
    );
    m.gauge(
        "phxbinlogsvr_store_end_index",
        "log index of the next transaction",
        p.end_index,
    );
    m.counter(
        "phxbinlogsvr_store_transactions_appended_total",
        "transactions appended by this process",
        p.transactions_appended,
    );
    m.counter(
        "phxbinlogsvr_store_batches_applied_total",
        "batches that extended the log",
        p.batches_applied,
    );
    m.counter(
        "phxbinlogsvr_store_parts_applied_total",
        "parts of large transactions stored",
        p.parts_applied,
    );
    m.counter(
        "phxbinlogsvr_store_conflicts_total",
        "batches refused by the compare-and-set",
        p.conflicts,
    );
    m.counter(
        "phxbinlogsvr_store_rejected_total",
        "items that were not valid batches",
        p.rejected,
    );
    let w = &s.write;
    for (name, v) in [
        ("sessions_started", &w.sessions_started),
        ("sessions_connected", &w.sessions_connected),
        ("connect_failures", &w.connect_failures),
        ("proposals", &w.proposals),
        ("proposals_applied", &w.proposals_applied),
        ("proposals_conflict", &w.proposals_conflict),
        ("proposals_rejected", &w.proposals_rejected),
        ("proposals_failed", &w.proposals_failed),
        ("transactions_proposed", &w.transactions_proposed),
        ("transactions_acked", &w.transactions_acked),
        ("transactions_acked_known", &w.transactions_acked_known),
        ("acks_sent", &w.acks_sent),
        ("lease_lost", &w.lease_lost),
        ("dump_errors", &w.dump_errors),
        ("bytes_proposed", &w.bytes_proposed),
        ("transactions_split", &w.transactions_split),
        ("parts_proposed", &w.parts_proposed),
        ("transactions_resumed", &w.transactions_resumed),
        ("inflight_at_submit", &w.inflight_at_submit),
        ("inflight_micros", &w.inflight_micros),
    ] {
        m.counter(
            &format!("phxbinlogsvr_semisync_{name}_total"),
            "write path (semi-sync replica) counter",
            v.load(Ordering::Relaxed),
        );
    }
    m.gauge(
        "phxbinlogsvr_semisync_active",
        "1 while a semi-sync dump is connected",
        w.active.load(Ordering::Relaxed),
    );
    let ms = s.master.snapshot();
    for (name, v) in [
        ("connections_accepted", ms.connections_accepted),
        ("connections_refused", ms.connections_refused),
        ("auth_failures", ms.auth_failures),
        ("protocol_errors", ms.protocol_errors),
        ("queries", ms.queries),
        ("dumps_started", ms.dumps_started),
        ("dump_errors", ms.dump_errors),
        ("transactions_sent", ms.transactions_sent),
        ("events_sent", ms.events_sent),
        ("heartbeats_sent", ms.heartbeats_sent),
        ("bytes_sent", ms.bytes_sent),
    ] {
        m.counter(
            &format!("phxbinlogsvr_master_{name}_total"),
            "replication master counter",
            v,
        );
    }
    m.gauge(
        "phxbinlogsvr_master_connections_active",
        "replica connections open",
        ms.connections_active,
    );
    m.gauge(
        "phxbinlogsvr_master_dumps_active",
        "binlog dumps running",
        ms.dumps_active,
    );
    m.out
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&s),
    )
        .into_response()
}

/// Whether `headers` carry the admin token (compared in constant time).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(json!({"error": msg.to_string()}))).into_response()
}

/// `POST /switchover {"to": "<node name or id>"}`.
#[derive(Debug, serde::Deserialize)]
struct SwitchoverRequest {
    to: String,
}

/// Whether the node with admin address `addr` says it may campaign (its
/// MariaDB is up and caught up with the chosen log).
async fn peer_ready(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /status HTTP/1.1\r\nHost: phxsql\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (_, body) = text.split_once("\r\n\r\n")?;
        let v: Value = serde_json::from_str(body).ok()?;
        Some(v["agent"]["may_campaign"] == true)
    };
    tokio::time::timeout(Duration::from_millis(500), get)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Planned switchover, run on the master: turn read-only, wait until every
/// commit in flight is acknowledged (chosen) and the target has applied the
/// chosen log, then hand the lease to the target. Writes stop for about as
/// long as that takes; if it cannot be done within
/// [`SWITCHOVER_DRAIN_TIMEOUT`] the master turns writable again.
async fn switchover(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Json(req): Json<SwitchoverRequest>,
) -> Response {
    if !authorized(&headers, &s.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    let Some(ctl) = &s.agent else {
        return error(
            StatusCode::CONFLICT,
            "switchover needs the agent (phxbinlogsvr --agent)",
        );
    };
    if !s.handle.is_master() {
        let master = s.handle.master().and_then(|(id, _)| s.name_of(id));
        return error(
            StatusCode::CONFLICT,
            format!("this node is not the master (master: {master:?}); ask the master"),
        );
    }
    let target = s
        .voters
        .iter()
        .find(|(id, _)| s.name_of(*id) == Some(req.to.as_str()) || id.to_string() == req.to);
    let Some((to, to_admin)) = target.cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is no voting node of this cluster", req.to),
        );
    };
    if to == s.node_id {
        return error(StatusCode::BAD_REQUEST, "this node is the master already");
    }
    let t0 = std::time::Instant::now();
    ctl.gates.draining.store(true, Ordering::Release);
    let drained = loop {
        if t0.elapsed() > SWITCHOVER_DRAIN_TIMEOUT {
            break Err(format!(
                "not drained within {SWITCHOVER_DRAIN_TIMEOUT:?} (commits still waiting, or the target not caught up)"
            ));
        }
        if !s.handle.is_master() {
            break Err("lost the lease while draining".to_string());
        }
        if let Ok(db) = ctl.mariadb.observe().await
            && db.read_only
            && db.waiting_commits == 0
            && s.progress.snapshot().pos.includes(&db.binlog_pos)
            && peer_ready(&to_admin).await
        {
            break Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if let Err(why) = drained {
        ctl.gates.draining.store(false, Ordering::Release);
        tracing::warn!(to, %why, "switchover abandoned; writes resume");
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let drained_ms = t0.elapsed().as_millis() as u64;
    let result = s.handle.step_down(Some(to)).await;
    ctl.gates.draining.store(false, Ordering::Release);
    match result {
        Ok(at) => {
            tracing::info!(to, drained_ms, ?at, "switchover: lease handed over");
            Json(json!({
                "from": s.node_name,
                "to": s.name_of(to),
                "drained_ms": drained_ms,
                "instance": at,
            }))
            .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
