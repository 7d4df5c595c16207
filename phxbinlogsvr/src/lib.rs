//! `phxbinlogsvr`: the binlog server of a phxsql node.
//!
//! - [`semisync`]: a semi-synchronous replica of the local MariaDB master (the
//!   write path's input: binlog events in, ACKs out once a value is chosen);
//! - [`master`]: the replication master the local MariaDB replica connects to
//!   (the read path's output: chosen transactions out);
//! - [`server`]: the node's binlog server wired together (Paxos state
//!   machine over the event store, the write path, the replication master,
//!   the admin HTTP API); the `phxbinlogsvr` binary runs it.

pub mod master;
pub mod semisync;
pub mod server;
pub mod store;
