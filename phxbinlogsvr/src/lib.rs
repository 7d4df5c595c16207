//! `phxbinlogsvr`: the binlog server of a phxsql node.
//!
//! - [`semisync`]: a semi-synchronous replica of the local MariaDB master (the
//!   write path's input: binlog events in, ACKs out once a value is chosen);
//! - [`master`]: the replication master the local MariaDB replica connects to
//!   (the read path's output: chosen transactions out).

pub mod master;
pub mod semisync;
pub mod store;
