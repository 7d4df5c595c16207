//! Errors of the replication master.

use std::io;
use std::net::SocketAddr;

/// Errors of the server as a whole (binding, configuration).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },

    /// A configuration value is unusable.
    #[error("bad replication master configuration: {0}")]
    Config(String),

    /// Accepting connections failed in a way that stops the server.
    #[error("accept failed: {0}")]
    Accept(io::Error),
}

/// Why one connection ended abnormally. Each ends that connection only.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed (reset, broken pipe, truncated packet).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),

    /// The client broke the protocol (malformed or out-of-order packet).
    #[error("protocol: {0}")]
    Protocol(String),

    /// The client was too slow (handshake, or idle in the command phase).
    #[error("timed out {0}")]
    Timeout(&'static str),

    /// Authentication failed (ERR 1045 was sent).
    #[error("access denied for user {user:?}")]
    AccessDenied {
        /// The user name the client gave.
        user: String,
    },

    /// A newer dump of the same replica (same server_id) replaced this one,
    /// or the server is shutting down.
    #[error("stopped: {0}")]
    Stopped(&'static str),
}
