//! The error type of the semi-sync client.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// MariaDB's `ER_ACCESS_DENIED_ERROR`: wrong user or password.
pub const ER_ACCESS_DENIED: u16 = 1045;
/// MariaDB's `ER_MASTER_FATAL_ERROR_READING_BINLOG`: the dump cannot go on
/// (e.g. the connect state names a GTID the master's binlog does not have).
pub const ER_MASTER_FATAL_ERROR_READING_BINLOG: u16 = 1236;

/// Everything that can go wrong talking to the master.
///
/// After any error from [`crate::semisync::EventStream::next_event`] the
/// stream is dead (its position in the protocol is lost): reconnect with the
/// last complete GTID as the connect state.
#[derive(Debug, thiserror::Error)]
pub enum SemiSyncError {
    /// The configuration cannot work (checked before connecting).
    #[error("invalid semi-sync client configuration: {0}")]
    Config(String),

    /// The TCP connection could not be made.
    #[error("could not connect to the master at {addr}: {source}")]
    Connect {
        /// The master's address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// Connecting (TCP, handshake, set-up queries, dump request, first
    /// event) took longer than the configured `connect_timeout`.
    #[error("connecting to the master at {addr} took longer than {timeout:?}")]
    ConnectTimeout {
        /// The master's address.
        addr: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },

    /// The master refused our credentials (MariaDB error 1045 for a wrong
    /// password or unknown user, see [`ER_ACCESS_DENIED`]).
    #[error("the master refused the login as {user:?}: MariaDB error {code} ({state}): {message}")]
    AuthFailed {
        /// The user we logged in as.
        user: String,
        /// MariaDB's error code.
        code: u16,
        /// SQLSTATE (e.g. `28000`).
        state: String,
        /// MariaDB's message.
        message: String,
    },

    /// The account uses an authentication plugin we do not speak.
    #[error(
        "the master asks for the authentication plugin {plugin:?}; \
         only mysql_native_password is supported (ALTER USER ... IDENTIFIED VIA mysql_native_password)"
    )]
    UnsupportedAuthPlugin {
        /// The plugin's name.
        plugin: String,
    },

    /// The master answered a command with an ERR packet (after login), or
    /// ended the binlog dump with one.
    #[error("MariaDB error {code} ({state}) {during}: {message}")]
    Server {
        /// What we were doing.
        during: String,
        /// MariaDB's error code (e.g. 1236, [`ER_MASTER_FATAL_ERROR_READING_BINLOG`]).
        code: u16,
        /// SQLSTATE.
        state: String,
        /// MariaDB's message.
        message: String,
    },

    /// The master has semi-synchronous replication switched off, so it
    /// would never wait for our ACK: the write path would be lossy.
    #[error(
        "the master does not have semi-synchronous replication enabled \
         (rpl_semi_sync_master_enabled = {value:?}); set rpl_semi_sync_master_enabled=ON \
         (with rpl_semi_sync_master_wait_point=AFTER_SYNC)"
    )]
    SemiSyncDisabled {
        /// What the master reported (empty if the variable does not exist).
        value: String,
    },

    /// The dump's packets carry no semi-sync header although we asked for
    /// one with `@rpl_semi_sync_slave=1`.
    #[error(
        "the master did not start a semi-synchronous binlog dump (no 0xEF header on the first event)"
    )]
    NotSemiSync,

    /// Our `server_id` is the master's own: the master would skip nothing,
    /// but every replica id must be unique and differ from the master's.
    #[error(
        "server_id {0} is the master's own server_id; the binlog server needs an id of its own"
    )]
    SameServerId(u32),

    /// The master ended the dump with an EOF packet.
    #[error("the master ended the binlog dump (EOF packet)")]
    EndOfStream,

    /// The connection was closed (the master died, was shut down, or killed
    /// our connection).
    #[error("the master closed the connection {during}")]
    Closed {
        /// What we were doing.
        during: &'static str,
    },

    /// Nothing arrived for longer than the idle timeout, although the
    /// master sends heartbeats when idle: it hangs, or the network does.
    #[error("no data from the master for {0:?} (heartbeats should have arrived)")]
    IdleTimeout(Duration),

    /// A socket error.
    #[error("I/O error {during}: {source}")]
    Io {
        /// What we were doing.
        during: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// A packet larger than the configured limit.
    #[error("a packet of more than {limit} bytes arrived (limit: max_packet_size)")]
    PacketTooLarge {
        /// The configured limit.
        limit: usize,
    },

    /// The master said something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A binlog event we need to read (ROTATE, FORMAT_DESCRIPTION, or any
    /// event handed to the transaction assembler) is malformed.
    #[error("bad binlog event: {0}")]
    Event(#[from] binlog::Error),

    /// The stream failed earlier; this is that failure, repeated.
    #[error("the binlog stream failed earlier ({0}); reconnect")]
    Broken(String),
}

impl SemiSyncError {
    /// MariaDB's error code, when the master sent one.
    pub fn server_code(&self) -> Option<u16> {
        match self {
            SemiSyncError::AuthFailed { code, .. } | SemiSyncError::Server { code, .. } => {
                Some(*code)
            }
            _ => None,
        }
    }

    /// True when the error came from a lost connection (closed, reset,
    /// timed out) rather than from something the master said.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            SemiSyncError::Closed { .. }
                | SemiSyncError::IdleTimeout(_)
                | SemiSyncError::Io { .. }
                | SemiSyncError::EndOfStream
        )
    }

    pub(crate) fn io(during: &'static str) -> impl FnOnce(io::Error) -> SemiSyncError {
        move |source| {
            if matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) {
                // Keep the OS detail out: for the caller it is one thing.
                SemiSyncError::Closed { during }
            } else {
                SemiSyncError::Io { during, source }
            }
        }
    }
}

/// Result with [`SemiSyncError`].
pub type Result<T, E = SemiSyncError> = std::result::Result<T, E>;
