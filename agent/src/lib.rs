//! The agent: owns the local MariaDB's role. It promotes it to master only
//! once it applied every chosen transaction and this node holds the master
//! lease, demotes it (read-only, replica of the local binlog server) when the
//! lease is lost, refuses to rejoin when it holds transactions the chosen log
//! lacks, and tells the binlog server when it may campaign and when its write
//! path may run.
//!
//! * [`role`]: the decisions, a pure state machine ([`role::RoleMachine`]).
//! * [`mariadb`]: reading and switching the local MariaDB over SQL.
//! * [`Agent`]: the loop that connects them (runs inside `phxbinlogsvr`).
//!
//! * [`supervisor`]: runs `mariadbd` itself (`--supervise-mariadb`):
//!   initialises, starts, restarts it (as a replica, which rolls back
//!   commits left waiting for an ACK), and stops it for a rebuild.

pub mod mariadb;
pub mod role;
mod runner;
pub mod supervisor;

pub use mariadb::{LocalMariaDb, MariaDbError, ReplicationSource};
pub use role::{LeaseView, Role, ServerIds};
pub use runner::{
    Agent, AgentStatus, ClusterView, Gates, PROXY_HEARTBEAT_TIMEOUT, ProxyLiveness, StatusHandle,
    fencing_margin,
};
pub use supervisor::{LaunchConfig, RESTORED_GTID_FILE, Supervisor};
