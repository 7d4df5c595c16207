//! The local MariaDB as the agent sees and drives it (administrative
//! account, plain SQL over TCP).

use binlog::GtidPos;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Row};

use crate::role::{Action, MariaDbState, ReplicaState};

/// `rpl_semi_sync_master_timeout` of a promoted master: the maximum (ms,
/// about 49.7 days), so it never falls back to asynchronous replication,
/// which MariaDB would do silently on a timeout.
pub const SEMI_SYNC_TIMEOUT_MS: u64 = 4_294_967_295;

/// Errors talking to the local MariaDB.
#[derive(Debug, thiserror::Error)]
pub enum MariaDbError {
    #[error("MariaDB: {0}")]
    Sql(#[from] mysql_async::Error),
    #[error("MariaDB returned an unreadable {what}: {value:?}")]
    Unreadable { what: &'static str, value: String },
    #[error("{0} is not a MariaDB step")]
    NotSql(&'static str),
}

/// Where the local replica replicates from, and as whom.
#[derive(Clone)]
pub struct ReplicationSource {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for ReplicationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationSource")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The local MariaDB.
#[derive(Debug, Clone)]
pub struct LocalMariaDb {
    opts: Opts,
    /// One kept connection for the looks (every 100 ms: a new connection
    /// each time would be a TCP and authentication round trip each time).
    /// Steps use a connection of their own: one may hang (`read_only`
    /// behind stuck commits) and is then dropped, not pooled.
    looks: mysql_async::Pool,
    source: ReplicationSource,
}

/// A SQL string literal (MariaDB's default escaping: backslash and quote).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn parse_pos(what: &'static str, text: &str) -> Result<GtidPos, MariaDbError> {
    text.parse().map_err(|_| MariaDbError::Unreadable {
        what,
        value: text.to_string(),
    })
}

fn column(row: &Row, name: &str) -> Option<String> {
    let i = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str() == name)?;
    match row.as_ref(i)? {
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        mysql_async::Value::Int(v) => Some(v.to_string()),
        mysql_async::Value::UInt(v) => Some(v.to_string()),
        mysql_async::Value::NULL => None,
        other => Some(format!("{other:?}")),
    }
}

impl LocalMariaDb {
    /// `opts`: the administrative account on the local MariaDB (over TCP);
    /// `source`: the local binlog server a replica points at.
    pub fn new(opts: Opts, source: ReplicationSource) -> Self {
        let constraints = mysql_async::PoolConstraints::new(0, 1).unwrap_or_default();
        let looks = mysql_async::Pool::new(
            mysql_async::OptsBuilder::from_opts(opts.clone())
                .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints)),
        );
        LocalMariaDb {
            opts,
            looks,
            source,
        }
    }

    async fn conn(&self) -> Result<Conn, MariaDbError> {
        Ok(Conn::new(self.opts.clone()).await?)
    }

    /// Reads everything the agent decides on.
    pub async fn observe(&self) -> Result<MariaDbState, MariaDbError> {
        let mut c = self.looks.get_conn().await?;
        let row: Option<(String, i64, i64, u32)> = c
            .query_first(
                "SELECT @@gtid_binlog_pos, @@read_only, \
                 @@rpl_semi_sync_master_enabled, @@server_id",
            )
            .await?;
        let Some((binlog, read_only, semi_sync, server_id)) = row else {
            return Err(MariaDbError::Unreadable {
                what: "variables row",
                value: String::new(),
            });
        };
        let waiting: Option<(String, String)> = c
            .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
            .await?;
        let waiting_commits = match waiting {
            Some((_, v)) => v.trim().parse().map_err(|_| MariaDbError::Unreadable {
                what: "Rpl_semi_sync_master_wait_sessions",
                value: v,
            })?,
            None => 0,
        };
        let slave: Option<Row> = c.query_first("SHOW SLAVE STATUS").await?;
        let replica = slave.map(|r| {
            let errno: u32 = column(&r, "Last_SQL_Errno")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            ReplicaState {
                master_host: column(&r, "Master_Host").unwrap_or_default(),
                master_port: column(&r, "Master_Port")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                io_running: column(&r, "Slave_IO_Running").as_deref() == Some("Yes"),
                sql_running: column(&r, "Slave_SQL_Running").as_deref() == Some("Yes"),
                sql_error: (errno != 0)
                    .then(|| (errno, column(&r, "Last_SQL_Error").unwrap_or_default())),
            }
        });
        drop(c); // back to the pool
        Ok(MariaDbState {
            binlog_pos: parse_pos("gtid_binlog_pos", &binlog)?,
            read_only: read_only != 0,
            replica,
            semi_sync_master: semi_sync != 0,
            waiting_commits,
            server_id,
        })
    }

    /// After a restore from a backup: make the backup's GTID position this
    /// server's own (its binlog state, from which replication and the
    /// divergence check start), and forget any old replication set-up.
    pub async fn adopt_restored_position(&self, gtid: &str) -> Result<(), MariaDbError> {
        let sql = format!(
            "STOP SLAVE; RESET SLAVE ALL; RESET MASTER; \
             SET GLOBAL gtid_binlog_state = {q}; SET GLOBAL gtid_slave_pos = {q}",
            q = quote(gtid)
        );
        let mut c = self.conn().await?;
        c.query_drop(sql).await?;
        drop(c.disconnect().await);
        Ok(())
    }

    /// Carries out one SQL step.
    pub async fn apply(&self, action: &Action) -> Result<(), MariaDbError> {
        let sql = match action {
            // Turning read_only on waits for commits in progress; one left
            // waiting for an ACK would hold it forever. Give up after a
            // second (the agent looks again and sees the waiting commit).
            Action::SetReadOnly(true) => {
                "SET SESSION lock_wait_timeout = 1; SET GLOBAL read_only = ON".to_string()
            }
            Action::SetReadOnly(false) => "SET GLOBAL read_only = OFF".to_string(),
            Action::SetServerId(id) => format!("SET GLOBAL server_id = {id}"),
            Action::StopReplica => "STOP SLAVE".to_string(),
            Action::ReplicateFromBinlogServer => {
                let s = &self.source;
                // Start after everything the local binlog holds (the agent
                // checked it is all in the chosen log): a former master's own
                // transactions are in its binlog position, not in
                // gtid_slave_pos, and once its server_id changed, not in
                // gtid_current_pos either.
                format!(
                    "STOP SLAVE; SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos; \
                     CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, \
                     MASTER_USER={}, MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, \
                     MASTER_CONNECT_RETRY=1; START SLAVE",
                    quote(&s.host),
                    s.port,
                    quote(&s.user),
                    quote(&s.password)
                )
            }
            Action::SetSemiSyncMaster(true) => format!(
                "SET GLOBAL rpl_semi_sync_master_timeout = {SEMI_SYNC_TIMEOUT_MS}, \
                 rpl_semi_sync_master_wait_no_slave = ON, \
                 rpl_semi_sync_master_wait_point = AFTER_SYNC, \
                 rpl_semi_sync_master_enabled = ON"
            ),
            Action::SetSemiSyncMaster(false) => {
                "SET GLOBAL rpl_semi_sync_master_enabled = OFF".to_string()
            }
            Action::OpenWritePath => return Err(MariaDbError::NotSql("OpenWritePath")),
            Action::CloseWritePath => return Err(MariaDbError::NotSql("CloseWritePath")),
            Action::RestartMariaDb => return Err(MariaDbError::NotSql("RestartMariaDb")),
        };
        let mut c = self.conn().await?;
        c.query_drop(sql).await?;
        drop(c.disconnect().await);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
    }
}
