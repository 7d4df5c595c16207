//! The cluster configuration file.
//!
//! One YAML file describes the whole cluster: its nodes, their addresses and
//! ports, the credentials, the master lease, how to start MariaDB and how the
//! proxy behaves. Every process of the project (`phxbinlogsvr`, the agent,
//! `phxsqlproxy`, `phxctl`) reads the same file and picks its own node:
//!
//! ```no_run
//! # fn main() -> Result<(), phxsql_config::ConfigError> {
//! let cfg = phxsql_config::ClusterConfig::load("configs/cluster-3.yaml")?;
//! for warning in &cfg.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! let me = cfg.node("node1")?;
//! println!("Paxos on {}, admin API at {}", me.paxos_addr(), me.admin_url());
//! # Ok(()) }
//! ```
//!
//! Loading parses, fills in the defaults, resolves relative paths against the
//! file's directory, reads secrets given by environment variable or file, and
//! validates the whole cluster. Every error names the file, the key path and
//! the problem, with the line and column where known (see [`ConfigError`]).
//! The reference of every key is `docs/configuration.md`.
//!
//! Secrets ([`Secret`]) print as `***`, cannot be serialized, and are never
//! part of the replicated Paxos log: each node reads them from its own copy of
//! the file (or its environment, or a file beside it).

mod duration;
mod error;
mod raw;
mod resolve;
mod secret;

pub use duration::parse_duration;
pub use error::ConfigError;
pub use secret::{Secret, SecretSource};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The only version of the file format this build reads (`version: 1`).
pub const CONFIG_VERSION: u32 = 1;

/// Default of the top-level `base_port`.
pub const DEFAULT_BASE_PORT: u16 = 17000;

/// Where each port of a node falls when derived from its base port
/// (`base_port + offset`). Offsets 7 to 9 are reserved for future services, so
/// nodes sharing a host should have base ports at least 10 apart.
pub mod port_offset {
    pub const PAXOS: u16 = 0;
    pub const BINLOG: u16 = 1;
    pub const ADMIN: u16 = 2;
    pub const PROXY_RW: u16 = 3;
    pub const PROXY_RO: u16 = 4;
    pub const MARIADB: u16 = 5;
    pub const PROXY_ADMIN: u16 = 6;
    /// The largest offset in use: `base_port + LAST` must be a valid port.
    pub const LAST: u16 = PROXY_ADMIN;
}

/// The whole cluster, validated, with defaults filled in and paths absolute.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The file it was loaded from (for messages).
    pub source: PathBuf,
    /// The file format version (always [`CONFIG_VERSION`]).
    pub version: u32,
    /// Nonzero; Paxos frames from any other cluster id are rejected.
    pub cluster_id: u64,
    /// A human-readable name (metrics labels, status output).
    pub name: String,
    pub lease: LeaseConfig,
    pub credentials: Credentials,
    pub mariadb: MariadbConfig,
    pub proxy: ProxyConfig,
    /// In file order.
    pub nodes: Vec<NodeConfig>,
    /// Things that are allowed but probably wrong, one line each, in the
    /// error format. Callers log them at start-up.
    pub warnings: Vec<String>,
}

/// The master lease (a Paxos state machine).
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseConfig {
    /// Lease length. Failover takes about this long after a master dies.
    pub duration: Duration,
    /// How often the master renews; at most half the lease.
    pub renew_interval: Duration,
    /// Largest clock-rate error between two nodes, as a fraction in (0, 0.5):
    /// the master gives up `duration * drift` early, the others wait that
    /// much longer.
    pub drift: f64,
}

#[derive(Clone, Debug)]
pub struct Credentials {
    /// The MariaDB replication account: the binlog server logs in with it to
    /// the local master as a semi-sync replica, and the local replica logs in
    /// with it to the binlog server.
    pub replication: Account,
    /// The MariaDB administrative account the agent and the binlog server use
    /// for control statements (read_only, CHANGE MASTER, server_id, status).
    pub mariadb_admin: Account,
    /// Bearer token of the admin HTTP API (`phxctl` sends it).
    pub admin_token: Secret,
}

#[derive(Clone, Debug)]
pub struct Account {
    pub user: String,
    pub password: Secret,
}

/// How the agent starts the local `mariadbd`.
#[derive(Clone, Debug, PartialEq)]
pub struct MariadbConfig {
    /// `mariadbd` executable: a bare name is looked up in `PATH`; a path is
    /// absolute (relative ones were resolved against the file's directory).
    pub binary: PathBuf,
    /// The agent gives each node server ids at or above this base (it derives
    /// them from the base, the node id and the role epoch).
    pub server_id_base: u32,
    /// How long the agent waits for a started `mariadbd` to accept connections.
    pub start_timeout: Duration,
    /// Extra `mariadbd` options (name -> value; `None` is a bare flag).
    /// Options the agent manages itself are rejected at load time.
    pub options: BTreeMap<String, Option<String>>,
}

impl MariadbConfig {
    /// `options` as command-line arguments: `--name=value` or `--name`.
    pub fn option_args(&self) -> Vec<String> {
        self.options
            .iter()
            .map(|(name, value)| match value {
                Some(v) => format!("--{name}={v}"),
                None => format!("--{name}"),
            })
            .collect()
    }
}

/// `phxsqlproxy` settings (the same on every node).
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Most client connections per proxy process (both ports together).
    pub max_connections: u32,
    /// Connecting to a backend MariaDB fails after this long.
    pub connect_timeout: Duration,
    /// Close a client connection idle this long; `None`: never (MariaDB's own
    /// `wait_timeout` still applies).
    pub idle_timeout: Option<Duration>,
    /// A new read-write connection waits this long for a known master, then
    /// gets a MySQL error packet.
    pub master_wait_timeout: Duration,
    /// Send the PROXY protocol header to MariaDB, so that grants and the
    /// process list see the client's address.
    pub proxy_protocol: bool,
    /// The read-only port sends a client to another replica when the local
    /// one has not been caught up with the chosen log for this long.
    pub ro_max_lag: Duration,
    /// May the read-only port use the master's MariaDB (for its own node,
    /// or when no replica is healthy)?
    pub ro_include_master: bool,
}

/// A node's place in the initial Paxos membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Votes: counts for majorities and may hold the master lease.
    Voter,
    /// Follows every value without voting (e.g. a node being added).
    Learner,
}

/// One node: its identity, addresses and directories.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Unique name, used with `--node NAME` and in default directories.
    pub name: String,
    /// The Paxos node id: unique, nonzero, never reused for another machine.
    pub id: u64,
    pub role: Role,
    /// The address (IP or DNS name) others use to reach every service of this node.
    pub host: String,
    /// The address every service of this node listens on.
    pub bind: IpAddr,
    /// Paxos transport (peers connect here).
    pub paxos_port: u16,
    /// Replication master port of the binlog server (the local MariaDB
    /// replicates from here).
    pub binlog_port: u16,
    /// Admin HTTP API of the binlog server (status, master, members, metrics).
    pub admin_port: u16,
    /// Proxy read-write port: statements run on the current master.
    pub proxy_rw_port: u16,
    /// Proxy read-only port: statements run on this node's MariaDB.
    pub proxy_ro_port: u16,
    /// The proxy's own HTTP port (`/metrics`, `/health`).
    pub proxy_admin_port: u16,
    /// The local `mariadbd`.
    pub mariadb_port: u16,
    /// The binlog server's directory (Paxos log, event store).
    pub data_dir: PathBuf,
    /// The local MariaDB's `--datadir`.
    pub mariadb_datadir: PathBuf,
}

impl NodeConfig {
    /// `host:port` (IPv6 literals in brackets).
    pub fn addr(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }

    /// The socket address a service of this node listens on.
    pub fn listen_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.bind, port)
    }

    pub fn paxos_addr(&self) -> String {
        self.addr(self.paxos_port)
    }

    pub fn binlog_addr(&self) -> String {
        self.addr(self.binlog_port)
    }

    pub fn admin_addr(&self) -> String {
        self.addr(self.admin_port)
    }

    /// `http://host:admin_port`, what `phxctl` talks to.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    pub fn proxy_rw_addr(&self) -> String {
        self.addr(self.proxy_rw_port)
    }

    pub fn proxy_ro_addr(&self) -> String {
        self.addr(self.proxy_ro_port)
    }

    pub fn proxy_admin_addr(&self) -> String {
        self.addr(self.proxy_admin_port)
    }

    pub fn mariadb_addr(&self) -> String {
        self.addr(self.mariadb_port)
    }

    pub fn is_voter(&self) -> bool {
        self.role == Role::Voter
    }
}

impl ClusterConfig {
    /// Reads, resolves and validates the file at `path`. Secrets given by
    /// `*_env` come from this process's environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&text, path)
    }

    /// Parses `text` as if read from `path`: `path` names the file in messages
    /// and its directory anchors relative paths (the file itself is not read).
    pub fn from_str(text: &str, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_str_with_env(text, path, &|name| std::env::var_os(name))
    }

    /// [`ClusterConfig::from_str`] with `env` in place of the process
    /// environment for `*_env` secrets (tests, tools).
    pub fn from_str_with_env(
        text: &str,
        path: impl AsRef<Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Self, ConfigError> {
        resolve::load(text, path.as_ref(), env)
    }

    /// The node called `name`; the error lists the names the file has.
    pub fn node(&self, name: &str) -> Result<&NodeConfig, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ConfigError::UnknownNode {
                file: self.source.clone(),
                name: name.to_string(),
                known: self.nodes.iter().map(|n| n.name.clone()).collect(),
            })
    }

    /// The node with Paxos id `id`.
    pub fn node_by_id(&self, id: u64) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The voters, in file order.
    pub fn voters(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.is_voter())
    }

    /// The initial Paxos membership: (node id, Paxos address) of each voter.
    pub fn initial_voters(&self) -> Vec<(u64, String)> {
        self.voters().map(|n| (n.id, n.paxos_addr())).collect()
    }

    /// The admin API address of every node (what `phxctl` tries).
    pub fn admin_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NodeConfig::admin_url).collect()
    }
}

#[cfg(test)]
mod tests;
