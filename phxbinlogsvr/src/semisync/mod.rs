//! Semi-synchronous replica client of the local MariaDB master: the input
//! of the write path.
//!
//! The master commits a transaction to its binlog, then waits
//! (`rpl_semi_sync_master_wait_point=AFTER_SYNC`) until a semi-sync
//! replica acknowledges it; only then does the engine commit become visible
//! and the client get its OK. We are that replica: we read each
//! transaction as the master writes it, propose it through Paxos, and ACK
//! it only once it is chosen. So a commit returns to its client only when a
//! majority holds it.
//!
//! # Protocol (MariaDB 10.11, checked against a real `mariadbd` in
//! `tests/semisync.rs`)
//!
//! 1. TCP, server greeting, `HandshakeResponse41` with
//!    `mysql_native_password` (an `AuthSwitchRequest` to that plugin is
//!    answered; other plugins are refused with a clear error). A wrong
//!    password is MariaDB error 1045, [`SemiSyncError::AuthFailed`].
//! 2. Checks: `rpl_semi_sync_master_enabled` must be ON (otherwise the
//!    master never waits for us and the write path would silently be
//!    lossy), the master's `server_id` must differ from ours; a wait point
//!    other than `AFTER_SYNC` is logged as a warning.
//! 3. The queries a MariaDB replica sends, in its order:
//!    `SET @master_heartbeat_period=<ns>` (idle master sends HEARTBEATs, so
//!    a silent connection is detected by [`SemiSyncConfig::idle_timeout`]),
//!    `SET @master_binlog_checksum= @@global.binlog_checksum` then `SELECT
//!    @master_binlog_checksum` (the checksum of the events to come),
//!    `SET @mariadb_slave_capability=4` (GTID events as they are),
//!    `SET @slave_connect_state='<GtidPos>'` (start after it),
//!    `SET @slave_gtid_strict_mode=1`, and `SET @rpl_semi_sync_slave=1`,
//!    which is what makes the dump semi-synchronous.
//! 4. `COM_REGISTER_SLAVE` (our server_id, no password), then
//!    `COM_BINLOG_DUMP` (position 4, flags 0, our server_id, no file name:
//!    with a connect state the master starts from the GTID).
//! 5. Every packet of the dump is `0x00 | 0xEF | flag | event`; flag bit 1
//!    asks for an ACK at the end of this event. The master sets it on the
//!    last event of a transaction whose commit waits (the XID event, or the
//!    QUERY of a DDL). Other bytes: `0xFF` ERR (e.g. 1236) and `0xFE` EOF
//!    end the dump. The first event is an artificial ROTATE (timestamp 0,
//!    flag `LOG_EVENT_ARTIFICIAL_F`, position 0) naming the file; it comes
//!    before the FORMAT_DESCRIPTION but already carries the agreed checksum.
//!    A real ROTATE's header log_pos is in the old file, its body names the
//!    new one. Events of 16 MiB and more arrive as several packets, glued
//!    back together here. Sequence ids are ignored on this stream (the
//!    master restarts them after each flagged event).
//! 6. ACK: `0xEF | u64 LE position | file name` (no NUL), sequence id 0,
//!    naming the flagged event's end: (file of the last ROTATE, header
//!    log_pos). An ACK at or beyond a waiting commit's position releases
//!    it, so acknowledging the last of several transactions releases all.
//!
//! # Use
//!
//! ```no_run
//! # async fn demo() -> Result<(), phxbinlogsvr::semisync::SemiSyncError> {
//! use phxbinlogsvr::semisync::{SemiSyncClient, SemiSyncConfig, TransactionReader};
//!
//! let cfg = SemiSyncConfig::new(([127, 0, 0, 1], 3306).into(), "repl", "secret", 100);
//! let (events, acker) = SemiSyncClient::connect(&cfg).await?.into_split();
//! let mut reader = TransactionReader::new(events, cfg.connect_state.clone());
//! loop {
//!     let t = reader.next_transaction().await?;
//!     // ... propose t.transaction through Paxos; once chosen:
//!     acker.ack_position(&t.end).await?;
//! }
//! # }
//! ```
//!
//! [`EventStream`] reads, [`Acker`] (cheap to clone) acknowledges, so one
//! task can read while another acks. After any error, reconnect with the
//! last complete GTID as the connect state
//! ([`TransactionReader::gtid_pos`]); nothing is delivered twice.

mod client;
mod conn;
mod error;
mod packet;
mod transactions;

pub use client::{
    Acker, BinlogPosition, DEFAULT_MAX_PACKET_SIZE, EventStream, MARIADB_SLAVE_CAPABILITY_GTID,
    MasterInfo, ReplEvent, SEMI_SYNC_ACK_REQUESTED, SEMI_SYNC_MAGIC, SemiSyncClient,
    SemiSyncConfig,
};
pub use error::{ER_ACCESS_DENIED, ER_MASTER_FATAL_ERROR_READING_BINLOG, Result, SemiSyncError};
pub use transactions::{ReplItem, ReplTransaction, TransactionReader};
